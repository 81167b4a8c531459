"""Magnitude criterion normalizations, on filters whose norms are known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pat_ray.plugins.builtin.criteria.magnitude import Magnitude
from pat_ray.tracer.trace import trace_channel_groups


class TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.small = nn.Conv2d(1, 2, 1, bias=False)  # P = 1 weight per filter
        self.big = nn.Conv2d(2, 2, 3, bias=False)  # P = 18 weights per filter
        self.head = nn.Linear(2, 3)

    def forward(self, x):
        return self.head(self.big(self.small(x)).mean((2, 3)))


def scored(normalize: str) -> dict[str, torch.Tensor]:
    model = TwoConvs()
    with torch.no_grad():
        model.small.weight.copy_(torch.tensor([1.0, 3.0]).view(2, 1, 1, 1))
        model.big.weight.copy_(torch.cat([torch.full((1, 2, 3, 3), 1.0), torch.full((1, 2, 3, 3), 2.0)]))
    graph = trace_channel_groups(model, torch.randn(1, 1, 8, 8))
    return Magnitude(normalize=normalize).scores(model, graph)


def test_filter_size_divides_each_norm_by_the_root_of_its_weight_count():
    scores = scored("filter_size")
    torch.testing.assert_close(scores["small"], torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(scores["big"], torch.tensor([1.0, 2.0]))  # ||w|| = c * sqrt(18)


def test_group_mean_and_raw_norms():
    torch.testing.assert_close(scored("group_mean")["small"], torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(scored("none")["big"], torch.tensor([18**0.5, 2 * 18**0.5]))


def test_an_unknown_normalization_names_the_choices():
    with pytest.raises(ValueError, match="group_mean, filter_size, none"):
        Magnitude(normalize="layer")
