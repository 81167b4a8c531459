"""The Early Pruning Indicator as pure functions over architecture snapshots.

``A_t`` is the vector of channels kept per group that the budget would select after
epoch t. EPI measures how much ``A_t`` still moves: the mean structural similarity of
``A_t`` to the ``r`` snapshots before it. Pruning starts at the first epoch where EPI is
both high (>= tau) and higher than its ``k`` previous values (../shared/PAPER.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Counts = Sequence[int]
Similarity = Callable[[Counts, Counts], float]


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
    snapshots: Sequence[Counts], window: int, similarity: Similarity = structural_similarity
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
    if t < window or curve[t] is None:
        return False
    current = curve[t]
    past = [v for v in curve[max(0, t - patience) : t] if v is not None]
    return current >= tau and (current >= 1.0 or all(current > v for v in past))


def early_bird_trigger(distances_to_previous: Sequence[float], window: int, epsilon: float) -> bool:
    """Early-Bird's rule: ``window`` previous masks exist and none is ``epsilon`` or farther."""
    return len(distances_to_previous) >= window and max(distances_to_previous) < epsilon
