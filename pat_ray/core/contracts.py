"""What a plugin's objects must provide, beside ``Criterion`` (``core/criterion.py``).

Protocols rather than base classes: a backend or a metric only needs the right shape, so a
plain function or a class from another library qualifies (``plugins/pat-ray-torch-pruning``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from pat_ray.core.architecture import Architecture
from pat_ray.tracer.graph import ModelGraph


@runtime_checkable
class SimilarityMetric(Protocol):
    """How alike two sub-network snapshots are: 1 for identical, 0 for nothing in common."""

    def __call__(self, a: Architecture, b: Architecture) -> float: ...


@runtime_checkable
class SurgeryBackend(Protocol):
    """Physically shrinks a model to an architecture."""

    def apply(
        self,
        model: nn.Module,
        graph: ModelGraph,
        architecture: Architecture,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        """Shrink ``model`` in place to ``architecture`` (indices relative to ``graph``) and
        slice ``optimizer``'s state (momentum, Adam moments) to the kept channels, so that
        training continues warm; the optimizer's param groups must hold the new parameters."""
