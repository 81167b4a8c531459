"""Pruning the torchvision model zoo and the CIFAR ResNets, for real."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision

import pat_ray
from _helpers import assert_pruning_is_exact, flops_counted_by_torch, randomize_norms
from pat_ray.core.cost.flops import graph_cost, measure_cost
from pat_ray.core.selection import Budget, select_architecture
from pat_ray.core.surgery import apply_architecture
from pat_ray.core.verify import check_pruned
from pat_ray.models.cifar_resnet import CifarResNet
from pat_ray.plugins.builtin.criteria.magnitude import Magnitude
from pat_ray.tracer.trace import trace_channel_groups

TORCHVISION = [
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "mobilenet_v2",
    "vgg11_bn",
    "densenet121",
    "efficientnet_b0",
    "mobilenet_v3_small",
    "regnet_x_400mf",
    "convnext_tiny",
    "shufflenet_v2_x0_5",
]


def build(name: str):
    torch.manual_seed(0)
    if name.startswith("cifar_resnet"):
        return CifarResNet(int(name.removeprefix("cifar_resnet"))), torch.randn(2, 3, 32, 32)
    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    return model, torch.randn(2, 3, 96, 96)


# Deeper or wider siblings that take a smaller sibling's code path (the same blocks, more of them
# or more channels): each family is tested here with its smallest member(s), the whole zoo is pruned
# by ``benchmarks/zoo_coverage.py`` (BENCHMARKS.md). They took about half of this test's minutes.
LARGE_SIBLINGS = (
    *("regnet_y_128gf", "vit_h_14", "vit_l_32", "vit_l_16", "swin_s", "swin_b", "swin_v2_s", "swin_v2_b"),
    *("convnext_small", "convnext_base", "convnext_large", "densenet161", "densenet169", "densenet201"),
    *(f"efficientnet_b{i}" for i in range(1, 8)),
    *("efficientnet_v2_m", "efficientnet_v2_l", "mnasnet0_75", "mnasnet1_3"),
    *(f"regnet_{kind}_{size}" for kind in "xy" for size in ("800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")),
    *("resnet34", "resnet101", "resnet152", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet101_2"),
    *("shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"),
    *("vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"),
)


def every_classifier() -> list[str]:
    """Each torchvision classification family (transformers included): its members not in ``LARGE_SIBLINGS``."""
    return [name for name in torchvision.models.list_models(module=torchvision.models) if name not in LARGE_SIBLINGS]


def zoo_model(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The untrained model with 10 classes and an input it takes, small where it allows: ViTs
    are built for 64 px (their position embedding fixes the size); MaxViT's window partitions
    need 224 px."""
    torch.manual_seed(0)
    extra: dict = {"aux_logits": False, "init_weights": False} if name in ("inception_v3", "googlenet") else {}
    size = {"inception_v3": 96, "maxvit_t": 224}.get(name, 64)
    if name.startswith("vit"):
        extra["image_size"] = size
    model = torchvision.models.get_model(name, weights=None, num_classes=10, **extra).eval()
    return model, torch.randn(2, 3, size, size)


@pytest.mark.slow
@pytest.mark.parametrize("name", every_classifier())
def test_each_torchvision_family_prunes_to_30_50_and_70_percent_of_its_flops(name):
    """One trace, three budgets: each architecture applied to its own copy of the dense model,
    which must then run forward and backward (what ``pat_ray.prune`` does, traced once). The
    traced cost equals the measured one first."""
    dense, x = zoo_model(name)
    measured = measure_cost(dense, x)
    graph = trace_channel_groups(dense, x)
    assert graph_cost(graph) == measured  # the cost model (attention included) == hooks and counters
    assert measured.flops == flops_counted_by_torch(dense, x)  # == torch's own count, which shares no table
    full = measured.flops
    scores = Magnitude().scores(dense, graph)
    giant = sum(p.numel() for p in dense.parameters()) > 150e6  # convnext_large, vit_l_16: 20 s a budget
    for budget in (0.5,) if giant else (0.3, 0.5, 0.7):
        model = copy.deepcopy(dense)
        apply_architecture(model, graph, select_architecture(graph, scores, Budget(budget)))
        check_pruned(model, x, list(graph.output_shapes))
        assert abs(measure_cost(model, x).flops / (budget * full) - 1) < 0.03, budget
        model.train()
        model(x).sum().backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_resnet56"])
def test_half_flops_prune_runs_and_hits_budget(name):
    model, x = build(name)
    before = measure_cost(model, x)
    assert graph_cost(trace_channel_groups(model, x)) == before  # cost model == hooks
    pat_ray.prune(model, x, criterion="magnitude", budget=0.5)
    after = measure_cost(model, x)
    assert abs(after.flops / (0.5 * before.flops) - 1) < 0.03
    assert after.params < before.params
    model.train()
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# ConvNeXt's LayerNorms normalize over the channels: pruning changes their statistics, so it is
# not the dense model with channels zeroed (tests/test_channel_layouts.py checks its parts).
EXACT = [name for name in TORCHVISION if not name.startswith("convnext")]


@pytest.mark.slow
@pytest.mark.parametrize("name", EXACT + ["cifar_resnet20"])
def test_surgery_equals_zeroing_the_removed_channels(name):
    model, x = build(name)
    randomize_norms(model)
    assert_pruning_is_exact(model, x, 0.5)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "cifar_resnet20"])
def test_full_budget_changes_nothing(name):
    model, x = build(name)
    randomize_norms(model)
    model.eval()
    with torch.no_grad():
        before = model(x)
    arch = pat_ray.prune(model, x, budget=1.0)
    assert arch.is_full
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["convnext_tiny", "shufflenet_v2_x0_5"])
def test_the_pat_engine_trains_prunes_and_reloads_the_newly_supported_families(name, tmp_path):
    """Channels-last LayerNorm / Linear (ConvNeXt) and channel shuffles (ShuffleNet V2) through a
    whole PaT run: pruned mid-training with SGD momentum sliced, checkpoint rebuilt and equal."""
    from _helpers import configured
    from pat_ray.config import FixedStart
    from pat_ray.training.checkpoint import load_checkpoint

    config = configured(
        output_dir=tmp_path,
        model={"name": name, "params": {}},
        data={
            "name": "synthetic",
            "params": {"num_samples": 32, "num_classes": 4, "shape": [3, 32, 32]},
            "batch_size": 16,
        },  # fmt: skip
        training={"epochs": 2},
        start=FixedStart(epoch=1),
        pruning={"steps": 1, "interval": 1},  # the one step within the last epoch's 2 iterations
    )
    result = pat_ray.run(config, local=True, quiet=True)
    kept = result.final_flops / result.dense_flops
    assert result.trigger_epoch == 1 and 0.5 - 0.03 < kept <= 0.5 + pat_ray.BUDGET_TOLERANCE
    model, _ = load_checkpoint(result.checkpoint)
    assert measure_cost(model, torch.randn(1, 3, 32, 32)).flops == result.final_flops


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "name", "shape"),
    [
        ("video", "r3d_18", (2, 3, 4, 32, 32)),  # Conv3DSimple: a subclass of nn.Conv3d
        ("video", "mc3_18", (2, 3, 4, 32, 32)),
        ("video", "r2plus1d_18", (2, 3, 4, 32, 32)),
        ("segmentation", "fcn_resnet50", (2, 3, 64, 64)),  # returns a dict of outputs
        ("segmentation", "deeplabv3_mobilenet_v3_large", (2, 3, 64, 64)),
        ("segmentation", "lraspp_mobilenet_v3_large", (2, 3, 64, 64)),
    ],
)
def test_video_and_segmentation_models_prune_to_budget(family, name, shape):
    torch.manual_seed(0)
    extra = {"weights_backbone": None} if family == "segmentation" else {}
    model = torchvision.models.get_model(name, weights=None, num_classes=5, **extra)
    x = torch.randn(*shape)
    before = measure_cost(model, x)
    assert graph_cost(trace_channel_groups(model, x)) == before
    pat_ray.prune(model, x, budget=0.5)
    assert abs(measure_cost(model, x).flops / (0.5 * before.flops) - 1) < 0.03
    out = model.train()(x)
    (out["out"] if isinstance(out, dict) else out).sum().backward()
