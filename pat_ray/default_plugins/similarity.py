"""Built-in similarity metrics between two architecture snapshots, in [0, 1]."""

from __future__ import annotations

import pat_ray
from pat_ray.core.architecture import Architecture
from pat_ray.core.epi import mask_similarity, structural_similarity


def structural(a: Architecture, b: Architecture) -> float:
    """EPI's: compares the channels kept per group, not which channels."""
    return structural_similarity(a.counts, b.counts)


def mask_hamming(a: Architecture, b: Architecture) -> float:
    """Early-Bird's: compares which channels are kept (binary masks)."""
    sizes = [a.sizes[n] for n in a.names]
    return mask_similarity([frozenset(a.kept[n]) for n in a.names], [frozenset(b.kept[n]) for n in a.names], sizes)


@pat_ray.hookimpl
def pat_ray_register_similarity_metrics(register) -> None:
    register("structural", lambda: structural)
    register("mask_hamming", lambda: mask_hamming)
