"""Built-in similarity metrics between two architecture snapshots, in [0, 1]."""

from __future__ import annotations

from pat_ray.core.architecture import Architecture
from pat_ray.core.contracts import SimilarityMetric
from pat_ray.core.epi import mask_similarity, structural_similarity, weighted_structural_similarity


def structural(a: Architecture, b: Architecture) -> float:
    """EPI's: compares the channels kept per group, not which channels."""
    return structural_similarity(a.counts, b.counts)


def structural_layers(a: Architecture, b: Architecture) -> float:
    """EPI's as the paper counts: per layer, so a group that sets the width of k layers
    (a residual stream, say) weighs k times. Snapshots without layer counts weigh 1 each."""
    weights = [a.layers[n] for n in a.names] if a.layers else [1] * len(a.names)
    return weighted_structural_similarity(a.counts, b.counts, weights)


def mask_hamming(a: Architecture, b: Architecture) -> float:
    """Early-Bird's: compares which channels are kept (binary masks)."""
    sizes = [a.sizes[n] for n in a.names]
    return mask_similarity([frozenset(a.kept[n]) for n in a.names], [frozenset(b.kept[n]) for n in a.names], sizes)


METRICS = {"structural": structural, "structural_layers": structural_layers, "mask_hamming": mask_hamming}


def metric(name: str) -> SimilarityMetric:
    """The factory each built-in name is registered with: a metric takes no params."""
    return METRICS[name]
