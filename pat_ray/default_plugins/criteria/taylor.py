"""First-order Taylor criterion on BatchNorm (Molchanov et al., CVPR 2019).

The squared first-order estimate of the loss change when a channel is removed,
``(gamma * dL/dgamma + beta * dL/dbeta)^2``, per mini-batch, averaged over the mini-batches
observed since the last reset and summed over the group's BatchNorms. The estimate is in
loss units, so it is comparable across layers without normalization. Groups with no
BatchNorm use the same formula over their producers' weights and biases.
"""

from __future__ import annotations

import torch
from torch import nn

import pat_ray
from pat_ray.core.criterion import Criterion, Scores, member_rows, member_tensor
from pat_ray.core.graph import ChannelGroup, ModelGraph


class Taylor(Criterion):
    needs_gradients = True

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._batches = 0

    def observe(self, model: nn.Module, graph: ModelGraph) -> None:
        with torch.no_grad():
            for group in graph.prunable:
                estimate = _estimate(model, group)
                if group.name in self._sums:
                    self._sums[group.name] += estimate
                else:
                    self._sums[group.name] = estimate
        self._batches += 1

    def scores(self, model: nn.Module, graph: ModelGraph) -> Scores:
        if self._batches == 0:
            raise RuntimeError(
                "taylor criterion has observed no backward pass: call observe() after "
                "loss.backward(), or pass calibration batches"
            )
        return {g.name: (self._sums[g.name] / self._batches).cpu() for g in graph.prunable}

    def reset(self) -> None:
        self._sums.clear()
        self._batches = 0


def _estimate(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    norms = list(group.members_with_role("norm"))
    members = norms or list(group.members_with_role("out", "depthwise", "grouped"))
    device = member_tensor(model, members[0], "weight").device
    total = torch.zeros(group.size, device=device)  # stays on device: no sync per batch
    for member in members:
        first_order = torch.zeros(group.size, device=device)
        for name in ("weight", "bias"):
            param = member_tensor(model, member, name)
            if param is None or param.grad is None:
                continue
            value = member_rows(param, member, group.size)
            grad = member_rows(param.grad, member, group.size)
            first_order += (value * grad).sum(1).float()
        total += first_order**2
    return total


@pat_ray.hookimpl
def pat_ray_register_criteria(register) -> None:
    register("taylor", Taylor)
