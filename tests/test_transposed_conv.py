"""Transposed convolutions (decoders, upsampling heads): traced, scored on the right weight
axis, pruned exactly, and costed like the model runs them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pat_ray
from _helpers import assert_pruning_is_exact, randomize_norms
from pat_ray.core.cost.flops import graph_cost
from pat_ray.errors import UnsupportedModelError
from pat_ray.plugins.builtin.criteria.magnitude import Magnitude
from pat_ray.tracer.trace import trace_channel_groups


class EncoderDecoder(nn.Module):
    """Down with a strided conv, up with two transposed convs (one with a bias and an
    output_padding), then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(16, 12, 2, stride=2, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.refine = nn.ConvTranspose2d(12, 10, 3, stride=2, padding=1, output_padding=1)
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(10, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)
        )

    def forward(self, x):
        return self.head(self.refine(self.up(self.down(x))))


def test_a_transposed_conv_prunes_exactly_on_both_of_its_sides():
    torch.manual_seed(0)
    model, x = EncoderDecoder(), torch.randn(3, 3, 8, 8)
    randomize_norms(model)
    arch = assert_pruning_is_exact(model, x, 0.5)
    assert len(arch.kept["up.0"]) < 12 and len(arch.kept["refine"]) < 10  # outputs of both pruned
    assert model.up[0].weight.shape == (len(arch.kept["down.0"]), len(arch.kept["up.0"]), 2, 2)
    assert model.refine.bias.shape == (len(arch.kept["refine"]),)


def test_the_cost_model_counts_transposed_convs_as_they_run():
    torch.manual_seed(0)
    model, x = EncoderDecoder(), torch.randn(1, 3, 8, 8)
    up = model.up[0]
    alone = pat_ray.measure_cost(nn.Sequential(up), torch.randn(1, 16, 4, 4)).flops
    assert alone == 16 * 12 * 2 * 2 * 4 * 4  # every input pixel meets the whole (in, out, k, k) weight
    assert graph_cost(trace_channel_groups(model, x)).flops == pat_ray.measure_cost(model, x).flops
    pat_ray.prune(model, x, budget=0.5)
    assert graph_cost(trace_channel_groups(model, x)).flops == pat_ray.measure_cost(model, x).flops


def test_prune_reaches_the_budget_and_the_model_trains_on():
    model, x = EncoderDecoder(), torch.randn(4, 3, 16, 16)
    dense = pat_ray.measure_cost(model, x).flops
    pat_ray.prune(model, x, budget=0.5)
    assert pat_ray.measure_cost(model, x).flops / dense == pytest.approx(0.5, abs=0.03)
    torch.nn.functional.cross_entropy(model(x), torch.zeros(4, dtype=torch.long)).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_magnitude_scores_a_transposed_conv_by_its_output_columns():
    model, x = EncoderDecoder(), torch.randn(1, 3, 8, 8)
    graph = trace_channel_groups(model, x)
    group = next(g for g in graph.groups if g.name == "up.0")
    scores = Magnitude(normalize="none").scores(model, graph)["up.0"]
    expected = model.up[0].weight.detach().transpose(0, 1).flatten(1).norm(dim=1)  # weight is (in, out, k, k)
    torch.testing.assert_close(scores, expected)
    assert group.size == 12


def test_a_grouped_transposed_conv_is_refused_naming_it():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ConvTranspose2d(8, 8, 2, stride=2, groups=2), nn.Flatten())
    with pytest.raises(UnsupportedModelError, match=r"module '1' \(ConvTranspose2d\).*groups=2"):
        trace_channel_groups(model, torch.randn(1, 3, 4, 4))


def test_the_latency_probe_times_transposed_convs():
    model, x = EncoderDecoder(), torch.randn(1, 3, 8, 8)
    table = pat_ray.measure_latency(model, x, batch_size=2, points=2, repeats=1, rounds=1)
    assert {"up.0", "refine"} <= set(table.layers)
