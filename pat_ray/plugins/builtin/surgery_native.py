"""The ``native`` surgery backend: pat_ray's own pure-torch channel removal."""

from __future__ import annotations

import torch
from torch import nn

from pat_ray.core.architecture import Architecture
from pat_ray.core.surgery import apply_architecture
from pat_ray.tracer.graph import ModelGraph


class NativeSurgery:
    def apply(
        self,
        model: nn.Module,
        graph: ModelGraph,
        architecture: Architecture,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        apply_architecture(model, graph, architecture, optimizer)
