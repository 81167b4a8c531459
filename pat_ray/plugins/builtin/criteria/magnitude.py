"""Magnitude criterion: a channel matters as much as its filter weights are large.

Per output channel, the Lp norm (p = 1 or 2) of the producers' filter weights, summed over
the group's coupled members, then normalized so that layer scale does not decide the global
ranking: ``normalize: group_mean`` (default) divides by the group's mean score;
``filter_size`` is the paper's reading, each filter's norm over the square root of its
number of weights; ``none`` ranks raw norms.
"""

from __future__ import annotations

from typing import Literal, get_args

from torch import nn

from pat_ray.core.criterion import Criterion, Scores, filter_norms, normalize_per_group
from pat_ray.tracer.graph import ModelGraph

Normalization = Literal["group_mean", "filter_size", "none"]


class Magnitude(Criterion):
    def __init__(self, p: int = 2, normalize: Normalization = "group_mean") -> None:
        self.check(p, normalize)
        self.p, self.normalize = p, normalize

    @staticmethod
    def check(p: int = 2, normalize: Normalization = "group_mean") -> None:
        """The values' own check, which config validation runs without building the criterion."""
        if p not in (1, 2):
            raise ValueError(f"magnitude criterion: p must be 1 or 2, got {p!r}")
        if normalize not in get_args(Normalization):
            raise ValueError(
                f"magnitude criterion: normalize must be one of {', '.join(get_args(Normalization))}, got {normalize!r}"
            )

    def scores(self, model: nn.Module, graph: ModelGraph) -> Scores:
        per_weight = self.normalize == "filter_size"
        norms = {g.name: filter_norms(model, g, self.p, per_weight) for g in graph.prunable}
        return normalize_per_group(norms) if self.normalize == "group_mean" else norms
