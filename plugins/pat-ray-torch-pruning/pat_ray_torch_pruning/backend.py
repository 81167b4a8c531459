"""``backend: torch_pruning``: pat_ray decides *which* channels go, Torch-Pruning removes them.

pat_ray's selection gives an ``Architecture`` (kept channel indices per channel group).
This backend hands each group's removed indices to Torch-Pruning's ``DependencyGraph``, which
finds and shrinks every coupled layer itself; the result is the same model the native backend
builds (same shapes, same outputs), made by an independent implementation. Torch-Pruning does
not know about optimizers, so the optimizer's per-channel state (momentum, Adam moments) is
sliced here with the same indices, from pat_ray's own to-do list (``channels_to_drop``).
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from pat_ray.sdk import Architecture, ModelGraph, channels_to_drop, kept_indices, set_size_attributes


class TorchPruningSurgery:
    def apply(
        self,
        model: nn.Module,
        graph: ModelGraph,
        architecture: Architecture,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        removed, roles = channels_to_drop(graph, architecture)
        if not removed:
            return
        before = {(m, n): p for m, module in model.named_modules() for n, p in module.named_parameters(recurse=False)}
        dependencies = _dependency_graph(model, graph)
        for group in graph.prunable:
            producer = next(group.producers(), None)
            drop = removed.get((producer.module, "out")) if producer else None
            if drop is None or drop.numel() == 0:
                continue
            module = model.get_submodule(producer.module)
            prune_fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels
            plan = dependencies.get_pruning_group(module, prune_fn, idxs=drop.tolist())
            if not dependencies.check_pruning_group(plan):
                raise ValueError(f"torch_pruning refuses to remove {drop.numel()} channels of {producer.module!r}")
            plan.prune()
        set_size_attributes(model, graph, architecture)
        if optimizer is not None:
            _move_optimizer_state(model, optimizer, before, removed, roles)


def _dependency_graph(model: nn.Module, graph: ModelGraph) -> tp.DependencyGraph:
    """Trace in eval mode: the example forward must not touch BatchNorm running statistics."""
    training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=torch.zeros(graph.input_shape, device=device), verbose=False
        )
    finally:
        model.train(training)


def _move_optimizer_state(model, optimizer, before, removed, roles) -> None:
    """Point the optimizer at the new parameters and slice their state like the weights."""
    replaced = {}
    for (module_name, param_name), old in before.items():
        new = getattr(model.get_submodule(module_name), param_name)
        if new is old:
            continue
        replaced[old] = new
        state = optimizer.state.pop(old, None)
        if state:
            slice_ = _slicer(module_name, old.shape, removed, roles.get(module_name, set()))
            optimizer.state[new] = {
                k: slice_(v) if torch.is_tensor(v) and v.shape == old.shape else v for k, v in state.items()
            }
            if any(torch.is_tensor(v) and v.dim() and v.shape != new.shape for v in optimizer.state[new].values()):
                del optimizer.state[new]  # e.g. a grouped conv's interleaved rows: restart its state cold
    for param_group in optimizer.param_groups:
        param_group["params"] = [replaced.get(p, p) for p in param_group["params"]]


def _slicer(module_name: str, shape: torch.Size, removed, roles):
    def keep(axis: str, size: int) -> torch.Tensor | None:
        drop = removed.get((module_name, axis))
        return None if drop is None or drop.numel() == 0 else kept_indices(size, drop)

    keep_out = keep("out", shape[0])
    keep_in = keep("in", shape[1]) if len(shape) > 1 and "depthwise" not in roles else None

    def slice_(t: torch.Tensor) -> torch.Tensor:
        if keep_out is not None:
            t = t.index_select(0, keep_out.to(t.device))
        if keep_in is not None:
            t = t.index_select(1, keep_in.to(t.device))
        return t

    return slice_
