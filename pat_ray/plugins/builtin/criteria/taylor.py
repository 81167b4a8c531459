"""First-order Taylor criterion on BatchNorm (Molchanov et al., CVPR 2019).

The squared first-order estimate of the loss change when a channel is removed,
``(gamma * dL/dgamma + beta * dL/dbeta)^2``, per mini-batch, averaged over the mini-batches
observed since the last reset and summed over the group's BatchNorms. The estimate is in
loss units, so it is comparable across layers without normalization. Groups with no
BatchNorm use the same formula over their producers' weights and biases.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pat_ray.core.criterion import Criterion, Scores, member_rows, parameter_attribute
from pat_ray.tracer.graph import ChannelGroup, Member, ModelGraph


class Taylor(Criterion):
    needs_gradients = True

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._batches = 0
        self._plan: tuple[nn.Module, ModelGraph, list[_GroupPlan]] | None = None

    def observe(self, model: nn.Module, graph: ModelGraph) -> None:
        # runs after every backward: module lookups are resolved once per (model, graph), as a
        # dozen tiny Python-level ops per BatchNorm would otherwise show in every iteration
        if self._plan is None or self._plan[0] is not model or self._plan[1] is not graph:
            self._plan = (model, graph, [_GroupPlan.of(model, group) for group in graph.prunable])
        with torch.no_grad():
            for plan in self._plan[2]:
                estimate = plan.estimate()
                if plan.name in self._sums:
                    self._sums[plan.name] += estimate
                else:
                    self._sums[plan.name] = estimate
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
        self._plan = None


@dataclass(frozen=True)
class _GroupPlan:
    """Where one group's estimate comes from: its BatchNorms, else its producers."""

    name: str
    size: int
    members: tuple[tuple[nn.Module, tuple[str, ...], Member], ...]  # module, its weight's and bias' names

    @classmethod
    def of(cls, model: nn.Module, group: ChannelGroup) -> _GroupPlan:
        members = list(group.members_with_role("norm")) or list(group.producers())
        modules = [model.get_submodule(m.module) for m in members]
        names = [tuple(parameter_attribute(module, n) for n in ("weight", "bias")) for module in modules]
        return cls(group.name, group.size, tuple(zip(modules, names, members)))

    def estimate(self) -> torch.Tensor:
        """Sum over members of (sum over the channel's parameters of value * gradient)^2."""
        total = None
        for module, names, member in self.members:
            first_order = None
            for param in (getattr(module, name, None) for name in names):
                if param is None or param.grad is None:
                    continue
                term = (member_rows(param, member, self.size) * member_rows(param.grad, member, self.size)).sum(1)
                first_order = term if first_order is None else first_order + term
            if first_order is not None:
                square = first_order.float().square()
                total = square if total is None else total + square
        if total is None:  # no gradient reached this group
            device = next(self.members[0][0].parameters()).device
            return torch.zeros(self.size, device=device)
        return total
