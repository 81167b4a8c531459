"""``pat_ray.prune``: one call for users who just want a smaller model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from pat_ray.core.architecture import Architecture
from pat_ray.core.cost.latency import LatencyTable
from pat_ray.core.criterion import Criterion
from pat_ray.core.kinds import AttentionCut, Measure
from pat_ray.core.modes import in_mode
from pat_ray.core.prune_step import pruned
from pat_ray.core.selection import Budget, select_architecture
from pat_ray.plugins.registry import get_registry
from pat_ray.tracer.graph import Example
from pat_ray.tracer.trace import trace_channel_groups


def prune(
    model: nn.Module,
    example_input: Example,
    criterion: str | Criterion = "magnitude",
    budget: float = 0.5,
    measure: Measure = "flops",
    round_to: int = 1,
    backend: str = "native",
    exclude: Iterable[str] = (),
    attention: AttentionCut = "heads",
    calibration: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
    criterion_params: Mapping[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    latency: LatencyTable | None = None,
) -> Architecture:
    """Physically prune ``model`` in place to keep ``budget`` of its ``measure``.

    ``criterion`` is a registered name (``magnitude``, ``bn_scale``, ``taylor``, or a
    plugin's) or a Criterion instance. Gradient criteria need ``calibration`` batches of
    ``(inputs, targets)``: each is run forward and backward through ``loss_fn`` (the
    gradients are cleared again afterwards). Pass ``optimizer`` to keep its state for the
    kept channels. ``measure="latency"`` keeps ``budget`` of the training step's time as
    ``latency`` (``pat_ray.measure_latency(model, ...)``, timed on the target device) predicts
    it. Returns the architecture applied, with indices relative to the model as
    it was before this call. ``example_input`` is one tensor, or a tuple with one tensor per
    argument of ``forward``. ``attention``: prune whole ``heads`` or each head's width
    (``head_dim``), as docs/attention.md describes. The pruned model is run once on
    ``example_input`` (its products on meta tensors, which check shapes without the arithmetic):
    should it fail (a tracer or backend bug), PrunedModelError names the layer,
    and the model and ``optimizer`` are left as they were before the call.
    """
    registry = get_registry()
    if isinstance(criterion, str):
        criterion = registry.create("criterion", criterion, **dict(criterion_params or {}))
    surgery = registry.create("surgery", backend)
    target = Budget(budget, measure, round_to)
    graph = trace_channel_groups(model, example_input, exclude=exclude, attention=attention)
    if calibration is not None:
        _observe(model, graph, criterion, calibration, loss_fn)
    elif criterion.needs_gradients:
        raise ValueError(f"criterion {type(criterion).__name__} needs gradients: pass calibration batches")
    architecture = select_architecture(graph, criterion.scores(model, graph), target, latency=latency)
    with pruned(model, graph, architecture, surgery, example_input, optimizer):  # a prune that fails changes nothing
        pass
    return architecture


def _observe(model, graph, criterion: Criterion, batches, loss_fn) -> None:
    try:
        with in_mode(model, training=True):
            for inputs, targets in batches:
                model.zero_grad(set_to_none=True)
                loss_fn(model(inputs), targets).backward()
                criterion.observe(model, graph)
    finally:
        model.zero_grad(set_to_none=True)
