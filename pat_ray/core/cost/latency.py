"""Training-step time as a function of channel counts: the cost model of a latency budget.

FLOPs count arithmetic, not time. On a real device a narrow layer on large maps is
memory-bound, a wide one on 2x2 maps weight-bound, and kernels work in blocks of 8 or 16
channels, so the same FLOPs removed in different layers save different time (BENCHMARKS.md,
"Time per FLOP"). A ``LatencyTable`` holds, for every conv / linear / norm of a model, its
measured forward + backward time on a small grid of (input, output) channel counts
(``latency_probe`` measures one on the run's device); ``predict`` sums the layers' times for
any channel counts by bilinear interpolation, so selection can try thousands of candidate
sub-networks as cheaply as it counts their FLOPs.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pat_ray.tracer.graph import ComputeTerm


@dataclass(frozen=True)
class LayerTimes:
    """One layer's seconds: ``seconds[i][j]`` at ``in_counts[i]`` inputs, ``out_counts[j]`` outputs.

    ``in_counts`` is empty when the time depends on the output channels alone (a norm, a
    depthwise or grouped conv, a layer whose input never shrinks); ``seconds`` then has one
    row. Times may not fall as channels grow: selection bisects on the premise that removing
    channels never costs time (``monotone`` makes noisy measurements so).
    """

    in_counts: tuple[int, ...]
    out_counts: tuple[int, ...]
    seconds: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        for axis, counts in (("in_counts", self.in_counts), ("out_counts", self.out_counts)):
            if any(c < 1 for c in counts) or any(a >= b for a, b in zip(counts, counts[1:])):
                raise ValueError(f"{axis} must be positive and strictly increasing, got {counts}")
        if not self.out_counts:
            raise ValueError("out_counts must not be empty")
        rows = max(1, len(self.in_counts))
        if len(self.seconds) != rows or any(len(row) != len(self.out_counts) for row in self.seconds):
            raise ValueError(f"seconds must be {rows} x {len(self.out_counts)}, one per (in, out) count pair")
        if any(not math.isfinite(s) or s < 0 for row in self.seconds for s in row):
            raise ValueError("seconds must be finite and >= 0")
        if monotone(self.seconds) != self.seconds:
            raise ValueError("seconds fall as channels grow somewhere; pass measurements through monotone()")

    def at(self, n_in: float, n_out: float) -> float:
        """Bilinear interpolation between grid points, clamped to the grid's range."""
        i0, i1, fi = _bracket(self.in_counts, n_in)
        o0, o1, fo = _bracket(self.out_counts, n_out)
        s = self.seconds
        low = s[i0][o0] * (1 - fo) + s[i0][o1] * fo
        high = s[i1][o0] * (1 - fo) + s[i1][o1] * fo
        return low * (1 - fi) + high * fi


def _bracket(grid: tuple[int, ...], x: float) -> tuple[int, int, float]:
    """Indices of the grid points around ``x`` and ``x``'s position between them."""
    if len(grid) <= 1 or x <= grid[0]:
        return 0, 0, 0.0
    if x >= grid[-1]:
        return len(grid) - 1, len(grid) - 1, 0.0
    hi = bisect.bisect_right(grid, x)
    return hi - 1, hi, (x - grid[hi - 1]) / (grid[hi] - grid[hi - 1])


def monotone(seconds: Iterable[Iterable[float]]) -> tuple[tuple[float, ...], ...]:
    """Running maximum along both axes: the least change that makes a table non-decreasing.

    Timing noise can make a layer with more channels measure faster than one with fewer;
    raising the smaller count's time to its neighbour's keeps the table an upper bound."""
    rows = [list(row) for row in seconds]
    for row in rows:
        for j in range(1, len(row)):
            row[j] = max(row[j], row[j - 1])
    for i in range(1, len(rows)):
        rows[i] = [max(a, b) for a, b in zip(rows[i], rows[i - 1])]
    return tuple(tuple(row) for row in rows)


@dataclass(frozen=True)
class LatencyTable:
    """Per-layer times of one model at one batch size on one kind of device."""

    layers: Mapping[str, LayerTimes]
    batch_size: int
    device_type: str  # "cpu" / "cuda": a table is only valid where it was measured
    device_name: str = ""  # for the record, e.g. the GPU's or CPU's model

    def predict(self, terms: Iterable[ComputeTerm], counts: Mapping[str, int]) -> float:
        """Seconds of one training step's layers for group ``g`` keeping ``counts[g]`` channels."""
        total = 0.0
        for term in (t for t in terms if t.timed):
            times = self.layers.get(term.module)
            if times is None:
                raise ValueError(
                    f"the latency table has no timings for layer {term.module!r}: it was measured on another model"
                )
            n_out = sum(counts[g] for g in term.out_groups) * term.out_repeat
            n_in = sum(counts[g] for g in term.in_groups) * term.in_repeat
            total += times.at(n_in, n_out)
        return total

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "device_type": self.device_type,
            "device_name": self.device_name,
            "layers": {
                name: {
                    "in_counts": list(t.in_counts),
                    "out_counts": list(t.out_counts),
                    "seconds": [list(r) for r in t.seconds],
                }
                for name, t in self.layers.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyTable:
        """Inverse of ``to_dict``; a malformed table raises ValueError saying what is wrong where."""
        try:
            layers = {name: _layer_from_dict(name, t) for name, t in data["layers"].items()}
            return cls(layers, int(data["batch_size"]), str(data["device_type"]), str(data.get("device_name", "")))
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"not a latency table: {type(err).__name__} {err}") from None


def _layer_from_dict(name: str, data: Mapping[str, Any]) -> LayerTimes:
    try:
        return LayerTimes(
            tuple(int(c) for c in data["in_counts"]),
            tuple(int(c) for c in data["out_counts"]),
            tuple(tuple(float(s) for s in row) for row in data["seconds"]),
        )
    except ValueError as err:
        raise ValueError(f"latency table, layer {name!r}: {err}") from None
