"""The Torch-Pruning backend builds the same model as pat_ray's native surgery."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from click.testing import CliRunner

from pat_ray.cli import main
from pat_ray.core.selection import Budget, select_architecture
from pat_ray.plugins.registry import get_registry
from pat_ray.tracer.trace import trace_channel_groups

MODELS = {
    "cifar_resnet20": (1, 3, 32, 32),
    "resnet18": (1, 3, 64, 64),
    "mobilenet_v2": (1, 3, 64, 64),
    "vgg11_bn": (1, 3, 32, 32),
}


def _randomized(name, shape):
    torch.manual_seed(0)
    model = get_registry().create("model", name, num_classes=10)
    for module in model.modules():  # non-trivial BN statistics, so dropped channels matter
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("name", MODELS)
def test_same_shapes_and_outputs_as_native_surgery(name):
    shape = MODELS[name]
    model = _randomized(name, shape)
    x = torch.randn(shape)
    graph = trace_channel_groups(model, x)
    scores = get_registry().create("criterion", "magnitude").scores(model, graph)
    architecture = select_architecture(graph, scores, Budget(0.5, "flops"))
    native, other = copy.deepcopy(model), copy.deepcopy(model)
    get_registry().create("surgery", "native").apply(native, graph, architecture)
    get_registry().create("surgery", "torch_pruning").apply(other, graph, architecture)
    assert {k: v.shape for k, v in other.state_dict().items()} == {k: v.shape for k, v in native.state_dict().items()}
    with torch.no_grad():
        assert torch.allclose(other(x), native(x), atol=1e-5)


def test_optimizer_momentum_is_sliced_like_native():
    model = _randomized("cifar_resnet20", MODELS["cifar_resnet20"]).train()
    x = torch.randn(4, 3, 32, 32)
    graph = trace_channel_groups(model, x[:1])
    scores = get_registry().create("criterion", "magnitude").scores(model, graph)
    architecture = select_architecture(graph, scores, Budget(0.5, "flops"))
    results = []
    for backend in ("native", "torch_pruning"):
        clone = copy.deepcopy(model)
        optimizer = torch.optim.SGD(clone.parameters(), lr=0.1, momentum=0.9)
        clone(x).sum().backward()
        optimizer.step()
        get_registry().create("surgery", backend).apply(clone, graph, architecture, optimizer)
        params = list(clone.parameters())
        assert [id(p) for p in optimizer.param_groups[0]["params"]] == [id(p) for p in params]
        results.append([optimizer.state[p]["momentum_buffer"] for p in params])
    for native, other in zip(*results):
        assert torch.equal(native, other)


def test_a_pipeline_uses_it(tmp_path):
    config = tmp_path / "tp.yaml"
    config.write_text(
        f"output_dir: {tmp_path}\ntraining: {{epochs: 3}}\nstart: {{kind: fixed, epoch: 1}}\n"
        "pruning: {backend: torch_pruning}\n"
    )
    result = CliRunner().invoke(main, ["run", str(config), "--local"])
    assert result.exit_code == 0, result.output
    assert "pruning started:  fixed start at epoch 1" in result.output
    kept = float(re.search(r"FLOPs kept: +([0-9.]+)", result.output).group(1))
    assert kept == pytest.approx(0.5, abs=0.015)
