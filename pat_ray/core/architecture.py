"""The sub-network snapshot ``A_t``: which channels of each prunable group are kept.

Indices are relative to the model the architecture was selected on. ``compose`` maps an
architecture chosen on an already-pruned model back onto the base model, which is what a
checkpoint stores so that loading never depends on the pruning history.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pat_ray.tracer.graph import AttentionCut, check_attention


@dataclass(frozen=True)
class Architecture:
    """Kept channel indices (sorted) per group, and each group's size before pruning.

    ``layers`` (optional): how many layers each group's channel count sets (its producers and
    the depthwise convs that follow it), for similarity metrics that count per layer as the
    paper does rather than per coupled group. ``attention``: how the trace that named the
    groups cut attention (whole heads, or head_dim): rebuilding the model traces it so again."""

    kept: Mapping[str, tuple[int, ...]]
    sizes: Mapping[str, int]
    layers: Mapping[str, int] | None = None
    attention: AttentionCut = "heads"

    def __post_init__(self) -> None:
        if set(self.kept) != set(self.sizes):
            raise ValueError("kept and sizes must name the same groups")
        for name, idx in self.kept.items():
            if not idx:
                raise ValueError(f"group {name!r} would lose all its channels")
            if list(idx) != sorted(set(idx)) or idx[0] < 0 or idx[-1] >= self.sizes[name]:
                raise ValueError(f"group {name!r}: kept indices must be sorted, unique, in range")

    @classmethod
    def full(
        cls, sizes: Mapping[str, int], layers: Mapping[str, int] | None = None, attention: AttentionCut = "heads"
    ) -> Architecture:
        return cls({n: tuple(range(s)) for n, s in sizes.items()}, dict(sizes), layers, attention)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.kept)

    @property
    def counts(self) -> tuple[int, ...]:
        """Channels kept per group, in group order: what EPI compares."""
        return tuple(len(idx) for idx in self.kept.values())

    def count(self, name: str) -> int:
        return len(self.kept[name])

    @property
    def is_full(self) -> bool:
        return all(len(self.kept[n]) == s for n, s in self.sizes.items())

    def fingerprint(self) -> str:
        """Short hash of the exact kept channels, used to check agreement across workers."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def compose(self, inner: Architecture) -> Architecture:
        """The architecture on the base model after ``inner`` was selected on ``self``'s
        result (inner's indices refer to the channels ``self`` kept)."""
        kept = {}
        for name, idx in self.kept.items():
            local = inner.kept.get(name, tuple(range(len(idx))))
            if inner.sizes.get(name, len(idx)) != len(idx):
                raise ValueError(f"group {name!r}: inner architecture has a different size")
            kept[name] = tuple(idx[i] for i in local)
        return Architecture(kept, dict(self.sizes), self.layers, self.attention)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"sizes": dict(self.sizes), "kept": {n: list(i) for n, i in self.kept.items()}}
        if self.layers is not None:
            data["layers"] = dict(self.layers)
        if self.attention != "heads":  # files written before head_dim existed read as heads
            data["attention"] = self.attention
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Architecture:
        sizes = {str(n): int(s) for n, s in data["sizes"].items()}
        kept = {str(n): tuple(int(i) for i in data["kept"][n]) for n in sizes}
        layers, attention = data.get("layers"), check_attention(data.get("attention", "heads"))
        return cls(kept, sizes, {str(n): int(c) for n, c in layers.items()} if layers is not None else None, attention)

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        return cls.from_dict(json.loads(text))
