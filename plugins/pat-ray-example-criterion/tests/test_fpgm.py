"""The FPGM plugin: registered only through its entry point, scores as the paper defines them,
and a whole PaT pipeline runs with it."""

from __future__ import annotations

import importlib.metadata
import re

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import pat_ray
from pat_ray.cli import main
from pat_ray.plugins.registry import get_registry
from pat_ray.tracer.trace import trace_channel_groups


def test_registered_through_the_entry_point_of_its_distribution():
    (ep,) = [ep for ep in importlib.metadata.entry_points(group="pat_ray") if ep.name == "fpgm"]
    assert ep.dist.name == "pat-ray-example-criterion"
    entry = get_registry().get("criterion", "fpgm")
    assert entry.plugin == "fpgm" and entry.distribution.startswith("pat-ray-example-criterion ")
    listing = CliRunner().invoke(main, ["plugins", "--kind", "criterion"]).output
    assert any(line.split()[:2] == ["criterion", "fpgm"] for line in listing.splitlines())


def test_scores_are_distances_to_the_other_filters():
    conv = nn.Conv2d(1, 3, 1, bias=False)
    with torch.no_grad():  # filters 0, 1, 5 on a line: distances sum to 6, 5, 9
        conv.weight.copy_(torch.tensor([0.0, 1.0, 5.0]).reshape(3, 1, 1, 1))
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(3, 2))
    graph = trace_channel_groups(model, torch.zeros(1, 1, 1, 1))
    scores = get_registry().create("criterion", "fpgm").scores(model, graph)
    (values,) = scores.values()
    assert torch.allclose(values, torch.tensor([6.0, 5.0, 9.0]) / (20.0 / 3))
    assert values.argmin() == 1  # the filter nearest the geometric median goes first


def test_one_shot_prune_with_fpgm_meets_the_budget():
    model = get_registry().create("model", "cifar_resnet20", num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    dense = pat_ray.measure_cost(model, x).flops
    pat_ray.prune(model, x, criterion="fpgm", budget=0.5)
    assert pat_ray.measure_cost(model, x).flops / dense == pytest.approx(0.5, abs=0.01)
    assert model(x).shape == (1, 10)


def test_a_pipeline_uses_it(tmp_path):
    config = tmp_path / "fpgm.yaml"
    config.write_text(
        f"output_dir: {tmp_path}\ntraining: {{epochs: 3}}\nstart: {{kind: fixed, epoch: 1}}\n"
        "pruning: {criterion: {name: fpgm}}\n"
    )
    result = CliRunner().invoke(main, ["run", str(config), "--local"])
    assert result.exit_code == 0, result.output
    assert "pruning started:  fixed start at epoch 1" in result.output
    kept = float(re.search(r"FLOPs kept: +([0-9.]+)", result.output).group(1))
    assert kept == pytest.approx(0.5, abs=0.015)
