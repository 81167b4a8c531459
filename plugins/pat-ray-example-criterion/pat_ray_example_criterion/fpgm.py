"""FPGM: Filter Pruning via Geometric Median (He et al., CVPR 2019), as a pat_ray criterion.

Magnitude criteria assume small filters matter least. FPGM looks for *redundant* filters
instead: a filter close to the geometric median of its layer can be rebuilt from the others,
so its importance is its total distance to every other filter of the layer.
"""

from __future__ import annotations

import torch
from torch import nn

from pat_ray.sdk import (
    ChannelGroup,
    Criterion,
    ModelGraph,
    Scores,
    member_rows,
    member_tensor,
    normalize_per_group,
)


class FPGM(Criterion):
    """Per channel: the sum of Euclidean distances from its filter to the group's other filters.

    For a group of coupled channels (a residual sum, a depthwise pair) the distances of the
    group's producers are summed. Per-group mean normalization, like the magnitude criterion,
    keeps layer width and weight scale from deciding the global ranking.
    """

    def __init__(self, p: float = 2.0) -> None:
        if p <= 0:
            raise ValueError(f"fpgm: p must be positive, got {p}")
        self.p = p

    def scores(self, model: nn.Module, graph: ModelGraph) -> Scores:
        return normalize_per_group({g.name: self._distances(model, g) for g in graph.prunable})

    def _distances(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor:
        total = torch.zeros(group.size)
        for member in group.producers():
            weight = member_tensor(model, member, "weight")
            filters = member_rows(weight, member, group.size).float()
            total += torch.cdist(filters[None], filters[None], p=self.p)[0].sum(1).cpu()
        return total
