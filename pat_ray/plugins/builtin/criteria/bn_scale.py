"""BN-scale criterion (network slimming): a channel matters as much as its |gamma|.

The cheapest criterion: no gradients, one read of each BatchNorm's scale. Summed over the
group's BatchNorms. Groups with no BatchNorm (e.g. a classifier's hidden Linear layers)
fall back to the per-group normalized L1 norm of their filters, so every group is ranked.
"""

from __future__ import annotations

import torch
from torch import nn

from pat_ray.core.criterion import (
    Criterion,
    Scores,
    filter_norms,
    member_rows,
    member_tensor,
    normalize_per_group,
)
from pat_ray.tracer.graph import ModelGraph


class BNScale(Criterion):
    def scores(self, model: nn.Module, graph: ModelGraph) -> Scores:
        result: Scores = {}
        for group in graph.prunable:
            total = torch.zeros(group.size)
            norms = [m for m in group.members_with_role("norm")]
            for member in norms:
                gamma = member_tensor(model, member, "weight")
                if gamma is not None:
                    total += member_rows(gamma, member, group.size).abs().sum(1).float().cpu()
            if total.any():
                result[group.name] = total
            else:
                result.update(normalize_per_group({group.name: filter_norms(model, group, 1)}))
        return result
