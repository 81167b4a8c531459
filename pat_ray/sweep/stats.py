"""What an oracle sweep's trials show once seed-to-seed noise is accounted for (pure).

Every grid point and policy runs once per seed. A trial group (``fixed-4``, ``epi``, ...)
is summarized by its mean and sample standard deviation over seeds. The reference the
verdict compares EPI with is not the argmax of the means (with a plateau of equally good
start epochs, that is noise) but the **earliest** start epoch whose mean accuracy is within
one standard error of the best mean: the cheapest start that is as good as the best.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


class _Trial(Protocol):
    group: str
    policy: str
    seed: int | None
    start_epoch: float | None
    accuracy: float | None
    flops_kept: float | None
    train_flops: float | None
    train_flops_ratio: float | None
    wall_seconds: float | None

    @property
    def ok(self) -> bool: ...


@dataclass(frozen=True)
class GroupStats:
    """One trial group (a grid point or a policy) over its finished seeds."""

    group: str
    policy: str
    seeds: tuple[int | None, ...]
    start_epochs: tuple[float | None, ...]  # per seed: epochs into training when pruning started
    accuracies: tuple[float, ...]
    flops_kept: float  # mean over seeds
    train_flops: float  # sum over seeds
    train_flops_ratio: float  # mean over seeds, against dense training
    wall_seconds: float  # mean over seeds

    @property
    def n(self) -> int:
        return len(self.accuracies)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 for one seed)."""
        return statistics.stdev(self.accuracies) if self.n > 1 else 0.0

    @property
    def se(self) -> float:
        return self.std / math.sqrt(self.n)

    @property
    def mean_train_flops(self) -> float:
        return self.train_flops / self.n

    @property
    def mean_start(self) -> float | None:
        starts = [s for s in self.start_epochs if s is not None]
        return statistics.fmean(starts) if starts else None


def group_stats(trials: Iterable[_Trial]) -> list[GroupStats]:
    """Finished trials grouped by ``group``, in the order groups first appear."""
    groups: dict[str, list[_Trial]] = {}
    for trial in trials:
        if trial.ok:
            groups.setdefault(trial.group, []).append(trial)
    return [_stats(name, sorted(members, key=lambda t: t.seed or 0)) for name, members in groups.items()]


def _stats(name: str, members: Sequence[_Trial]) -> GroupStats:
    return GroupStats(
        group=name,
        policy=members[0].policy,
        seeds=tuple(t.seed for t in members),
        start_epochs=tuple(t.start_epoch for t in members),
        accuracies=tuple(_measured(t.accuracy) for t in members),
        flops_kept=statistics.fmean(_measured(t.flops_kept) for t in members),
        train_flops=sum(_measured(t.train_flops) for t in members),
        train_flops_ratio=statistics.fmean(_measured(t.train_flops_ratio) for t in members),
        wall_seconds=statistics.fmean(_measured(t.wall_seconds) for t in members),
    )


def _measured(value: float | None) -> float:
    """A finished trial's number (only failed trials lack them, and they are never grouped)."""
    if value is None:
        raise ValueError("a finished trial lacks a measurement")
    return float(value)


def best_and_reference(fixed: Sequence[GroupStats]) -> tuple[GroupStats, GroupStats] | None:
    """The grid's best mean (ties: earliest), and the earliest start within one standard
    error of it (the reference EPI is judged against)."""
    if not fixed:
        return None
    by_start = sorted(fixed, key=lambda g: g.mean_start or 0.0)
    best = max(by_start, key=lambda g: g.mean)  # max keeps the first (earliest) of equal means
    reference = next(g for g in by_start if g.mean >= best.mean - best.se)
    return best, reference


def pooled_std(groups: Sequence[GroupStats]) -> float:
    """The seed-to-seed standard deviation of accuracy, pooled over groups with 2+ seeds."""
    variances = [(g.n - 1, g.std**2) for g in groups if g.n > 1]
    dof = sum(d for d, _ in variances)
    return math.sqrt(sum(d * v for d, v in variances) / dof) if dof else 0.0


@dataclass(frozen=True)
class Verdict:
    """EPI against the reference start epoch, in points, in seed-noise units and in cost."""

    epi: GroupStats
    best: GroupStats
    reference: GroupStats
    noise_std: float  # pooled seed-to-seed std of the grid's accuracies (fraction, not points)
    grid_size: int
    grid_train_flops: float  # one seed's worth: the sum of the grid points' mean training FLOPs
    dense: GroupStats | None = None
    finetune: GroupStats | None = None  # train-prune-fine-tune

    @property
    def gap_points(self) -> float:
        return 100 * (self.epi.mean - self.reference.mean)

    @property
    def gap_in_std(self) -> float | None:
        return self.gap_points / (100 * self.noise_std) if self.noise_std > 0 else None

    @property
    def tolerance_points(self) -> float:
        """The target: within max(1 seed std, 0.3 points) of the reference."""
        return max(100 * self.noise_std, 0.3)

    @property
    def accuracy_met(self) -> bool:
        return self.gap_points >= -self.tolerance_points

    @property
    def cost_share(self) -> float:
        """EPI's training FLOPs over the whole grid's (per seed, averaged over seeds)."""
        return self.epi.mean_train_flops / self.grid_train_flops

    @property
    def cost_met(self) -> bool:
        return self.cost_share <= 1 / self.grid_size

    def metrics(self) -> dict[str, float]:
        """Numbers for MLflow: every value a float."""
        values = {
            "epi_mean_start_epoch": self.epi.mean_start,
            "reference_start_epoch": self.reference.mean_start,
            "best_fixed_start_epoch": self.best.mean_start,
            "epi_accuracy_mean": self.epi.mean,
            "epi_accuracy_std": self.epi.std,
            "reference_accuracy_mean": self.reference.mean,
            "accuracy_gap_points": self.gap_points,
            "accuracy_gap_in_std": self.gap_in_std,
            "seed_std_points": 100 * self.noise_std,
            "epi_cost_share_of_grid": self.cost_share,
            "one_over_grid_size": 1 / self.grid_size,
            "epi_train_flops_vs_dense": self.epi.train_flops_ratio,
        }
        if self.dense is not None:
            values["epi_vs_dense_points"] = 100 * (self.epi.mean - self.dense.mean)
        if self.finetune is not None:
            values["epi_train_flops_vs_finetune"] = self.epi.mean_train_flops / self.finetune.mean_train_flops
        return {k: float(v) for k, v in values.items() if v is not None}
