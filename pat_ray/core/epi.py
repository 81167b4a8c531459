"""The Early Pruning Indicator as pure functions over architecture snapshots.

``A_t`` is the vector of channels kept per group that the budget would select after
epoch t. EPI measures how much ``A_t`` still moves: the mean structural similarity of
``A_t`` to the ``r`` snapshots before it. Pruning starts at the first epoch where EPI is
both high (>= tau) and higher than its ``k`` previous values (docs/method.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

Counts = Sequence[int]
Similarity = Callable[[Counts, Counts], float]
Snapshot = TypeVar("Snapshot")  # what a similarity compares: counts, or a whole Architecture


def layer_distance(a: int, b: int) -> float:
    """``|a - b| / (a + b)``: 0 when equal, 1 when one side is empty."""
    if a < 0 or b < 0:
        raise ValueError("channel counts must be non-negative")
    return 0.0 if a == b else abs(a - b) / (a + b)


def structural_similarity(a: Counts, b: Counts) -> float:
    """``Psi(A, B) = 1 - mean_l d_l(A, B)``, in [0, 1]."""
    if len(a) != len(b) or not a:
        raise ValueError(f"snapshots must have the same non-zero length ({len(a)} vs {len(b)})")
    return 1.0 - sum(layer_distance(x, y) for x, y in zip(a, b)) / len(a)


def weighted_structural_similarity(a: Counts, b: Counts, weights: Counts) -> float:
    """``Psi`` with each entry counted ``weights[i]`` times: per layer, when entry i is a
    group of coupled channels that sets the width of ``weights[i]`` layers."""
    if not len(a) == len(b) == len(weights) or not a or sum(weights) <= 0:
        raise ValueError("snapshots and weights must have the same non-zero length and positive total weight")
    return 1.0 - sum(w * layer_distance(x, y) for x, y, w in zip(a, b, weights)) / sum(weights)


def mask_similarity(a: Sequence[frozenset[int]], b: Sequence[frozenset[int]], sizes: Counts) -> float:
    """Early-Bird's: 1 - normalized Hamming distance between the binary channel masks."""
    differing = sum(len(x ^ y) for x, y in zip(a, b))
    return 1.0 - differing / sum(sizes)


def epi_value(similarities_to_previous: Sequence[float]) -> float:
    """``EPI_t``: the mean similarity of ``A_t`` to the (up to r) snapshots before it."""
    if not similarities_to_previous:
        raise ValueError("EPI needs at least one previous snapshot")
    return sum(similarities_to_previous) / len(similarities_to_previous)


def epi_curve(
    snapshots: Sequence[Snapshot],
    window: int,
    similarity: Callable[[Snapshot, Snapshot], float] = structural_similarity,  # type: ignore[assignment]
) -> list[float | None]:
    """EPI for every snapshot (None for the first, which has nothing to compare with)."""
    curve: list[float | None] = [None]
    for t in range(1, len(snapshots)):
        previous = snapshots[max(0, t - window) : t]
        curve.append(epi_value([similarity(snapshots[t], p) for p in previous]))
    return curve


def should_trigger(curve: Sequence[float | None], window: int, patience: int, tau: float) -> bool:
    """Whether the last EPI value starts pruning.

    It must come from a full window (``window`` previous snapshots exist), reach ``tau``,
    and exceed each of the ``patience`` EPI values before it (those that exist). One
    addition to the paper's rule: EPI = 1 (the last ``window`` snapshots are identical)
    triggers even if an earlier value was 1 too, or a fully stable curve would never fire.
    """
    t = len(curve) - 1
    current = curve[t] if t >= 0 else None
    if t < window or current is None:
        return False
    past = [v for v in curve[max(0, t - patience) : t] if v is not None]
    return current >= tau and (current >= 1.0 or all(current > v for v in past))


def early_bird_trigger(distances_to_previous: Sequence[float], window: int, epsilon: float) -> bool:
    """Early-Bird's rule: ``window`` previous masks exist and none is ``epsilon`` or farther."""
    return len(distances_to_previous) >= window and max(distances_to_previous) < epsilon


def trigger_epoch(curve: Sequence[float | None], window: int, patience: int, tau: float) -> int | None:
    """The 1-based epoch at which ``should_trigger`` first fires on ``curve``, else None."""
    for t in range(1, len(curve) + 1):
        if should_trigger(curve[:t], window, patience, tau):
            return t
    return None


@dataclass(frozen=True)
class CalibratedTau:
    """Any tau in ``(low, high]`` (``[0, high]`` if ``low`` is None) fires the rule at ``epoch``."""

    tau: float
    low: float | None
    high: float
    epoch: int | None


def calibrate_tau_curves(
    curves: Sequence[Sequence[float | None]], window: int, patience: int, target_epoch: int
) -> CalibratedTau | None:
    """The tau whose triggers land, on average over ``curves`` (one per seed), nearest to
    ``target_epoch``.

    The trigger epoch is a step function of tau that only changes at the curves' own
    values, so trying each value as tau finds every reachable outcome: each value ``v``
    stands for the interval of taus above the next smaller value up to ``v``. A curve on
    which tau never fires counts as firing after its last epoch. Ties in mean distance go to
    the earlier mean epoch (cheaper training), then to the widest interval (a slightly
    different curve on the real run still fires near it). ``epoch`` is the mean landing
    epoch, rounded. The suggested ``tau`` is the shortest decimal near the middle of the
    interval. None when no tau triggers on any curve (curves shorter than the window).
    """
    values = sorted({v for curve in curves for v in curve if v is not None})
    intervals: list[tuple[tuple[int, ...] | None, float | None, float]] = []  # (landings, low, high)
    for i, tau in enumerate(values):
        epochs = [trigger_epoch(curve, window, patience, tau) for curve in curves]
        landed = (
            None
            if all(e is None for e in epochs)
            else tuple(len(c) + 1 if e is None else e for e, c in zip(epochs, curves))
        )
        if intervals and intervals[-1][0] == landed:
            intervals[-1] = (landed, intervals[-1][1], tau)  # same outcome: one wider interval
        else:
            intervals.append((landed, values[i - 1] if i > 0 else None, tau))
    scored = [
        (
            sum(abs(e - target_epoch) for e in landed) / len(landed),
            sum(landed) / len(landed),
            (low or 0.0) - high,
            high,
            low,
        )
        for landed, low, high in intervals
        if landed is not None
    ]
    if not scored:
        return None
    _, mean_epoch, _, high, low = min(scored)
    return CalibratedTau(tau=_readable_tau(low, high), low=low, high=high, epoch=round(mean_epoch))


def _readable_tau(low: float | None, high: float) -> float:
    """A short decimal in ``(low, high]`` (``[0, high]`` when ``low`` is None)."""
    if low is None:
        return math.floor(high * 100) / 100
    middle = (low + high) / 2
    for decimals in range(1, 7):
        candidate = round(middle, decimals)
        if low < candidate <= high:
            return candidate
    return middle
