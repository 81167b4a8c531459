"""The one path from a selected architecture to a smaller model that runs, shared by the
one-shot ``pat_ray.prune`` and the PaT ``Pruner``: surgery, then the check that the smaller
model still computes outputs of the right shapes, then whatever the caller records about it;
anything that fails on the way leaves the model and its optimizer as they were."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from pat_ray.core.architecture import Architecture
from pat_ray.core.contracts import SurgeryBackend
from pat_ray.core.undo import undone_on_failure
from pat_ray.core.verify import check_pruned
from pat_ray.tracer.graph import Example, ModelGraph


@contextmanager
def pruned(
    model: nn.Module,
    graph: ModelGraph,
    architecture: Architecture,
    surgery: SurgeryBackend,
    example: Example,
    optimizer: torch.optim.Optimizer | None = None,
) -> Iterator[None]:
    """Shrink ``model`` to ``architecture`` (indices relative to ``graph``) and check it runs on
    ``example``; the block then records what the caller keeps of it (a re-trace). An error in
    surgery, in the check or in the block undoes the prune and propagates."""
    with undone_on_failure(model, optimizer):
        surgery.apply(model, graph, architecture, optimizer)
        check_pruned(model, example, list(graph.output_shapes), products_on_meta=not graph.shapes_from_values)
        yield
