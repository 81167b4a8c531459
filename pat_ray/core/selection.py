"""Global channel ranking under a budget: which channels the target would keep.

Channels are ranked across all groups by score and removed lowest first until the budget
(a fraction of FLOPs, params, channels, or the training step's time as a ``LatencyTable``
predicts it) is met: the measure decides where the ranking is cut, never the ranking. Each
group keeps at least its best unit. A unit is one channel, or — for groups feeding a grouped conv, or with
``round_to`` > 1 — a block of channels ranked within the group so that the kept count stays
legal (the same per conv group) or a multiple of ``round_to``. Cost is monotone in the
number of units removed, so the cut point is found by bisection over the ranked list.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

import torch

from pat_ray.core.architecture import Architecture
from pat_ray.core.cost import cost_of
from pat_ray.core.graph import ChannelGroup, ModelGraph
from pat_ray.core.latency import LatencyTable

Measure = Literal["flops", "params", "channels", "latency"]
MEASURES: tuple[Measure, ...] = get_args(Measure)


class BudgetError(ValueError):
    """The budget cannot be met on this model."""


@dataclass(frozen=True)
class Budget:
    """Keep ``fraction`` of the model's ``measure``; kept counts multiples of ``round_to``."""

    fraction: float
    measure: Measure = "flops"
    round_to: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise BudgetError(f"budget fraction must be in (0, 1], got {self.fraction}")
        if self.measure not in MEASURES:
            raise BudgetError(f"budget measure must be one of {', '.join(MEASURES)}; got {self.measure!r}")
        if self.round_to < 1:
            raise BudgetError(f"round_to must be >= 1, got {self.round_to}")


class _Unit(NamedTuple):  # a NamedTuple: selection builds one per channel of the model
    score: float
    group: int
    rank: int
    channels: tuple[int, ...]


def group_units(group: ChannelGroup, scores: torch.Tensor, round_to: int = 1, index: int = -1) -> list[_Unit]:
    """The group's units, best first; equal scores keep the lower channel index first."""
    if scores.shape != (group.size,):
        raise ValueError(f"group {group.name!r}: expected {group.size} scores, got {tuple(scores.shape)}")
    per_sub = group.size // group.subgroups
    table = scores.detach().double().cpu().reshape(group.subgroups, per_sub)
    order = torch.sort(-table, dim=1, stable=True).indices  # (subgroups, per_sub)
    row_scores = table.gather(1, order).mean(0).tolist()  # rank r's mean over conv groups
    rows = [tuple(row) for row in (order + torch.arange(group.subgroups)[:, None] * per_sub).T.tolist()]
    step = max(1, round_to // group.subgroups) if group.subgroups > 1 else round_to
    if step == 1:
        return [_Unit(score, index, rank, row) for rank, (score, row) in enumerate(zip(row_scores, rows))]
    units = []
    for rank, start in enumerate(range(0, per_sub, step)):
        block = row_scores[start : start + step]
        channels = tuple(c for row in rows[start : start + step] for c in row)
        units.append(_Unit(sum(block) / len(block), index, rank, channels))
    return units


def select_architecture(
    graph: ModelGraph,
    scores: Mapping[str, torch.Tensor],
    budget: Budget,
    reference: float | None = None,
    latency: LatencyTable | None = None,
) -> Architecture:
    """Keep the best-scored channels such that ``measure <= budget.fraction * reference``.

    ``reference`` defaults to the current model's full measure; pass the dense model's to
    express the budget against the unpruned model during iterative pruning. Of the two
    cut points around the target the closer one is taken. A ``latency`` budget needs the
    model's ``latency`` table.
    """
    measure = budget_measure(graph, budget.measure, latency)
    groups = graph.prunable
    sizes = {g.name: g.size for g in graph.groups}
    removable: list[_Unit] = []
    for gi, group in enumerate(groups):
        if group.name not in scores:
            raise ValueError(f"no scores for channel group {group.name!r}")
        removable += group_units(group, scores[group.name], budget.round_to, index=gi)[1:]
    removable.sort(key=lambda u: (u.score, u.group, -u.rank))
    # channels removed from each group by the first i units, for any i, without a Python loop
    unit_group = torch.tensor([u.group for u in removable], dtype=torch.long)
    unit_width = torch.tensor([len(u.channels) for u in removable], dtype=torch.long)

    def measure_after(n_removed: int) -> float:
        removed = torch.zeros(len(groups), dtype=torch.long)
        removed.index_add_(0, unit_group[:n_removed], unit_width[:n_removed])
        counts = dict(sizes)
        for group, n in zip(groups, removed.tolist()):
            counts[group.name] -= n
        return measure(counts)

    target = _reachable_target(budget, measure_after(len(removable)), measure_after(0), reference)

    class _Probe:  # lazy sequence for bisect: is the prefix of length i within budget?
        def __len__(self) -> int:
            return len(removable) + 1

        def __getitem__(self, i: int) -> bool:
            return measure_after(i) <= target

    cut = bisect.bisect_left(_Probe(), True)
    if cut > 0 and abs(measure_after(cut - 1) - target) < abs(measure_after(cut) - target):
        cut -= 1
    removed: dict[str, set[int]] = {g.name: set() for g in groups}
    for unit in removable[:cut]:
        removed[groups[unit.group].name].update(unit.channels)
    kept = {g.name: tuple(i for i in range(g.size) if i not in removed[g.name]) for g in groups}
    return Architecture(kept, {g.name: g.size for g in groups})


def smallest_counts(graph: ModelGraph, round_to: int = 1) -> dict[str, int]:
    """Every group's channel count in the smallest legal sub-network: each prunable group keeps
    only its best unit, whose width does not depend on the scores."""
    full = {g.name: g.size for g in graph.groups}
    return full | {g.name: len(group_units(g, torch.ones(g.size), round_to)[0].channels) for g in graph.prunable}


def check_reachable(
    graph: ModelGraph, budget: Budget, reference: float | None = None, latency: LatencyTable | None = None
) -> None:
    """Raise BudgetError unless some legal sub-network meets ``budget`` (as in ``select_architecture``)."""
    measure = budget_measure(graph, budget.measure, latency)
    full = measure({g.name: g.size for g in graph.groups})
    _reachable_target(budget, measure(smallest_counts(graph, budget.round_to)), full, reference)


def _reachable_target(budget: Budget, smallest: float, full: float, reference: float | None) -> float:
    """The measure the budget allows, once the smallest legal sub-network is known to fit it."""
    target = budget.fraction * (full if reference is None else reference)
    if smallest > target * (1 + 1e-9):
        raise BudgetError(
            f"cannot keep only {budget.fraction:.1%} of {budget.measure}: the smallest legal "
            f"sub-network keeps {smallest / (reference or full):.1%}; raise the fraction"
            + (" or lower round_to" if budget.round_to > 1 else "")
        )
    return target


def budget_measure(
    graph: ModelGraph, measure: Measure, latency: LatencyTable | None = None
) -> Callable[[Mapping[str, int]], float]:
    """The budget's measure of ``graph``'s model as a function of every group's channel count."""
    if measure == "channels":
        prunable = [g.name for g in graph.prunable]
        return lambda counts: float(sum(counts[name] for name in prunable))
    if measure == "latency":
        if latency is None:
            raise BudgetError("a latency budget needs the model's latency table (pat_ray.measure_latency)")
        return lambda counts: latency.predict(graph.terms, counts)
    field = "flops" if measure == "flops" else "params"
    return lambda counts: float(getattr(cost_of(graph.terms, counts), field))
