"""Magnitude criterion: a channel matters as much as its filter weights are large.

Per output channel, the Lp norm (p = 1 or 2) of the producers' filter weights, summed over
the group's coupled members, then normalized per group before the global ranking.
"""

from __future__ import annotations

from torch import nn

import pat_ray
from pat_ray.core.criterion import Criterion, Scores, filter_norms, normalize_per_group
from pat_ray.core.graph import ModelGraph


class Magnitude(Criterion):
    def __init__(self, p: int = 2) -> None:
        if p not in (1, 2):
            raise ValueError(f"magnitude criterion: p must be 1 or 2, got {p!r}")
        self.p = p

    def scores(self, model: nn.Module, graph: ModelGraph) -> Scores:
        return normalize_per_group({g.name: filter_norms(model, g, self.p) for g in graph.prunable})


@pat_ray.hookimpl
def pat_ray_register_criteria(register) -> None:
    register("magnitude", Magnitude)
