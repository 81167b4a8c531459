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
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch

from pat_ray.core.architecture import Architecture
from pat_ray.core.cost.flops import cost_of
from pat_ray.core.cost.latency import LatencyTable
from pat_ray.core.kinds import BUDGET_TOLERANCE, MEASURES, Measure
from pat_ray.errors import BudgetError
from pat_ray.tracer.graph import ChannelGroup, ModelGraph


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


class GroupRanking(NamedTuple):
    """One group's channels ranked best first and cut into units. Unit scores never increase
    with rank, so removing ``n`` units from a group always removes its last ``n``."""

    channels: torch.Tensor  # every channel index, best rank first (a rank spans every conv group)
    unit_scores: torch.Tensor  # (units,) float64: each unit's mean score
    unit_ends: torch.Tensor  # (units,) how many of ``channels`` the first u + 1 units hold

    def kept(self, units: int) -> tuple[int, ...]:
        """The channels the best ``units`` units hold, in index order."""
        return tuple(sorted(self.channels[: int(self.unit_ends[units - 1])].tolist()))


def rank_group(group: ChannelGroup, scores: torch.Tensor, round_to: int = 1) -> GroupRanking:
    """Rank ``group``'s channels by ``scores``; equal scores keep the lower channel index first.
    ``round_to`` counts the layers' widths: a head of 64 positions is a multiple of 8 alone."""
    round_to //= math.gcd(round_to, group.positions_per_channel)
    if scores.shape != (group.size,):
        raise ValueError(f"group {group.name!r}: expected {group.size} scores, got {tuple(scores.shape)}")
    if torch.isnan(scores).any():
        raise ValueError(f"group {group.name!r}: its scores contain NaN (diverged weights, or a criterion bug)")
    per_sub = group.size // group.subgroups
    table = scores.detach().double().cpu().reshape(group.subgroups, per_sub)
    order = torch.sort(-table, dim=1, stable=True).indices  # (subgroups, per_sub)
    rank_scores = table.gather(1, order).mean(0)  # rank r's mean over conv groups
    channels = (order + torch.arange(group.subgroups)[:, None] * per_sub).T.reshape(-1)
    step = max(1, round_to // group.subgroups) if group.subgroups > 1 else round_to
    unit_of_rank = torch.arange(per_sub) // step
    widths = torch.bincount(unit_of_rank)
    sums = torch.zeros(len(widths), dtype=torch.float64).index_add_(0, unit_of_rank, rank_scores)
    unit_scores = rank_scores if step == 1 else sums / widths
    return GroupRanking(channels, unit_scores, torch.cumsum(widths, 0) * group.subgroups)


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
    cut points around the target the closer one is taken, the one above only within
    ``BUDGET_TOLERANCE`` of the reference: whole heads or wide channel blocks are coarse, and a
    budget is a ceiling. A ``latency`` budget needs the model's ``latency`` table.
    """
    measure = budget_measure(graph, budget.measure, latency)
    groups = graph.prunable
    missing = [g.name for g in groups if g.name not in scores]
    if missing:
        raise ValueError(f"no scores for channel group {missing[0]!r}")
    rankings = [rank_group(g, scores[g.name], budget.round_to) for g in groups]
    unit_group, unit_width = _removal_order(rankings)  # every unit but each group's best, worst first
    sizes = {g.name: g.size for g in graph.groups}

    def measure_after(n_removed: int) -> float:
        removed = torch.zeros(len(groups), dtype=torch.long)
        removed.index_add_(0, unit_group[:n_removed], unit_width[:n_removed])
        counts = dict(sizes)
        for group, n in zip(groups, removed.tolist()):
            counts[group.name] -= n
        return measure(counts)

    full = measure_after(0)
    target = _reachable_target(budget, measure_after(len(unit_group)), full, reference)
    ceiling = target + BUDGET_TOLERANCE * (full if reference is None else reference)

    class _Probe:  # lazy sequence for bisect: is the prefix of length i within budget?
        def __len__(self) -> int:
            return len(unit_group) + 1

        def __getitem__(self, i: int) -> bool:
            return measure_after(i) <= target

    cut = bisect.bisect_left(_Probe(), True)
    above = measure_after(cut - 1) if cut > 0 else None
    if above is not None and above <= ceiling and abs(above - target) < abs(measure_after(cut) - target):
        cut -= 1
    removed_units = torch.bincount(unit_group[:cut], minlength=len(groups)).tolist()
    kept = {g.name: r.kept(len(r.unit_scores) - n) for g, r, n in zip(groups, rankings, removed_units)}
    return Architecture(kept, {g.name: g.size for g in groups}, attention=graph.attention)


def _removal_order(rankings: list[GroupRanking]) -> tuple[torch.Tensor, torch.Tensor]:
    """The group index and channel width of every removable unit (all but each group's best), in
    removal order: lowest score first; ties go to the lower group index, then the higher rank
    (so a group always loses its last units first)."""
    none = torch.empty(0, dtype=torch.long)  # a model with nothing to prune: no units
    score = torch.cat([torch.empty(0, dtype=torch.float64)] + [r.unit_scores[1:] for r in rankings])
    group = torch.cat(
        [none] + [torch.full((len(r.unit_scores) - 1,), i, dtype=torch.long) for i, r in enumerate(rankings)]
    )
    rank = torch.cat([none] + [torch.arange(1, len(r.unit_scores)) for r in rankings])
    width = torch.cat([none] + [r.unit_ends.diff() for r in rankings])
    order = torch.sort(-rank, stable=True).indices  # a lexicographic sort: least significant key first
    order = order[torch.sort(group[order], stable=True).indices]
    order = order[torch.sort(score[order], stable=True).indices]
    return group[order], width[order]


def smallest_counts(graph: ModelGraph, round_to: int = 1) -> dict[str, int]:
    """Every group's channel count in the smallest legal sub-network: each prunable group keeps
    only its best unit, whose width does not depend on the scores."""
    full = {g.name: g.size for g in graph.groups}
    return full | {g.name: int(rank_group(g, torch.ones(g.size), round_to).unit_ends[0]) for g in graph.prunable}


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
        if smallest >= full * (1 - 1e-9):
            raise BudgetError(
                f"cannot keep only {budget.fraction:.1%} of {budget.measure}: nothing in this model can be pruned; "
                "every channel group must keep its width (the model's outputs, layers kept whole such as LSTM, "
                "attention or spectral_norm, channel counts written in the code as in x.view(-1, 400))"
            )
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
