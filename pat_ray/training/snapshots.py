"""When to start pruning: the snapshot tracker every policy decides from.

The tracker records every snapshot (at the policy's cadence) and its EPI value whatever the
policy, so a dense or fixed-epoch run still shows the EPI curve (the oracle calibrates tau
from it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pat_ray.core.architecture import Architecture
from pat_ray.core.epi import epi_value
from pat_ray.plugins.builtin.similarity import mask_hamming

Similarity = Callable[[Architecture, Architecture], float]


@dataclass
class SnapshotTracker:
    """Snapshots ``A_1..A_t`` with EPI values and Early-Bird mask distances."""

    similarity: Similarity
    window: int
    schedule_snapshots: int  # how many the training schedule takes at the policy's cadence
    snapshots: list[Architecture] = field(default_factory=list)
    epi: list[float | None] = field(default_factory=list)
    mask_distances: list[list[float]] = field(default_factory=list)

    def record(self, snapshot: Architecture) -> float | None:
        previous = self.snapshots[-self.window :]
        value = epi_value([self.similarity(snapshot, p) for p in previous]) if previous else None
        self.mask_distances.append([1.0 - mask_hamming(snapshot, p) for p in previous])
        self.snapshots.append(snapshot)
        self.epi.append(value)
        return value

    def state(self) -> dict:
        return {
            "snapshots": [a.to_dict() for a in self.snapshots],
            "epi": self.epi,
            "mask_distances": self.mask_distances,
        }

    def load(self, state: dict) -> None:
        """Continue from ``state()`` of an earlier tracker of the same run."""
        for snapshot, epi, distances in zip(state["snapshots"], state["epi"], state["mask_distances"]):
            self.snapshots.append(Architecture.from_dict(snapshot))
            self.epi.append(epi)
            self.mask_distances.append(distances)
