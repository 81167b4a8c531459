"""Native surgery: physically remove channels from every layer a family knows how to cut.

The graph says which channels of which module go (``channels_to_drop``); each module's layer
family (``tracer/layers``) cuts its tensors; a per-channel parameter is sliced along its axis.

Each shrunk parameter is a new ``nn.Parameter`` (mutating ``.data`` in place would leave
autograd nodes with the old shape alive in any graph still referenced). The optimizer is
rewired to the new parameters, and each state tensor shaped like a parameter (SGD
momentum, Adam moments) is sliced with the same indices, so training continues warm.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from pat_ray.core.architecture import Architecture
from pat_ray.tracer.graph import ModelGraph, Role
from pat_ray.tracer.layers.declared import sync_counts
from pat_ray.tracer.layers.family import Cut, Reindex, Rewrite, complement, kept_indices, select
from pat_ray.tracer.layers.table import family_of


def apply_architecture(
    model: nn.Module,
    graph: ModelGraph,
    architecture: Architecture,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Shrink ``model`` in place to ``architecture`` (indices relative to ``graph``)."""
    removed, roles = channels_to_drop(graph, architecture)
    touched = sorted({name for name, _ in removed})
    param_axes = {m.module: m.axis for g in graph.groups for m in g.members_with_role("param")}
    state = _Rewriter(optimizer)
    for name in touched:
        if name in param_axes:
            _shrink_param(model, name, param_axes[name], removed[(name, "param")], state)
            continue
        module = model.get_submodule(name)
        family = family_of(module)
        if family is None:
            raise TypeError(f"native surgery cannot shrink {name!r} ({type(module).__name__})")
        family.shrink(module, _cut_of(name, removed, roles[name]), state)
    state.rewire()
    sync_counts(model)
    set_size_attributes(model, graph, architecture)


def _cut_of(name: str, removed: dict[tuple[str, str], torch.Tensor], roles: set[Role]) -> Cut:
    empty = torch.empty(0, dtype=torch.long)
    inputs = [int(side[2:]) for module, side in removed if module == name and side.startswith("in") and side[2:]]
    later = tuple(removed.get((name, input_side(k)), empty) for k in range(1, max(inputs, default=0) + 1))
    return Cut(removed.get((name, "out"), empty), removed.get((name, "in"), empty), frozenset(roles), later)


def input_side(input: int) -> str:
    """The to-do list's key for a layer's input number ``input``: ``in``, then ``in1``, ``in2``..."""
    return "in" if input == 0 else f"in{input}"


def set_size_attributes(model: nn.Module, graph: ModelGraph, architecture: Architecture) -> None:
    """Write the new sizes into the module attributes the forward builds shapes from (a head
    count): every surgery backend calls this after cutting the tensors."""
    for size in graph.size_attributes:
        if size.group in architecture.kept:
            module = model.get_submodule(size.module)
            setattr(module, size.attribute, architecture.count(size.group) * size.per_channel)
            family = family_of(module)
            if family is not None:
                family.resized(module)


def channels_to_drop(
    graph: ModelGraph, architecture: Architecture
) -> tuple[dict[tuple[str, str], torch.Tensor], dict[str, set[Role]]]:
    """Per ``(module name, "out" | "in" | "param")`` the sorted channel indices ``architecture`` removes,
    and the roles each touched module plays (a surgery backend's whole to-do list). A layer's
    second input and later ones (``nn.Bilinear``) are ``"in1"``, ``"in2"``..."""
    removed: dict[tuple[str, str], list[torch.Tensor]] = defaultdict(list)
    roles: dict[str, set[Role]] = defaultdict(set)
    for group in graph.groups:
        if group.name not in architecture.kept:
            continue
        if architecture.sizes[group.name] != group.size:
            raise ValueError(
                f"group {group.name!r} has {group.size} channels in the model but "
                f"{architecture.sizes[group.name]} in the architecture"
            )
        drop = complement(torch.tensor(architecture.kept[group.name], dtype=torch.long), group.size)
        if drop.numel() == 0:
            continue
        for member in group.members:
            axis = input_side(member.input) if member.role == "in" else "param" if member.role == "param" else "out"
            removed[(member.module, axis)].append(member.positions(drop))
            roles[member.module].add(member.role)
    return {key: _cat(parts) for key, parts in removed.items()}, dict(roles)


def _cat(parts: list[torch.Tensor] | None) -> torch.Tensor:
    if not parts:
        return torch.empty(0, dtype=torch.long)
    merged: torch.Tensor = torch.unique(torch.cat(parts))
    return merged


def _same_layout(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``index_select`` returns row-major tensors: a channels-last weight (and its momentum,
    which the optimizer updates alongside) must stay channels-last, or every later step
    converts layouts."""
    if old.dim() == 4 and not old.is_contiguous() and old.is_contiguous(memory_format=torch.channels_last):
        return new.contiguous(memory_format=torch.channels_last)
    return new


class _Rewriter:
    """Replaces module tensors with reindexed copies and moves optimizer state along."""

    def __init__(self, optimizer: torch.optim.Optimizer | None) -> None:
        self.optimizer = optimizer
        self.replaced: dict[nn.Parameter, nn.Parameter] = {}

    def __call__(self, module: nn.Module, name: str, fn: Reindex) -> None:
        old = getattr(module, name)
        if old is None:
            return
        new_data = _same_layout(fn(old.detach()), old)
        if not isinstance(old, nn.Parameter):
            setattr(module, name, new_data)  # a buffer
            return
        new = nn.Parameter(new_data, requires_grad=old.requires_grad)
        if self.optimizer is not None and old in self.optimizer.state:
            self.optimizer.state[new] = {
                key: _same_layout(fn(value), value) if torch.is_tensor(value) and value.shape == old.shape else value
                for key, value in self.optimizer.state.pop(old).items()
            }
        self.replaced[old] = new
        setattr(module, name, new)

    def rewire(self) -> None:
        if self.optimizer is None:
            return
        for group in self.optimizer.param_groups:
            group["params"] = [self.replaced.get(p, p) for p in group["params"]]


def _shrink_param(model: nn.Module, name: str, axis: int, drop: torch.Tensor, rewrite: Rewrite) -> None:
    """A per-channel parameter or buffer (a layer scale, say), sliced along its channel axis."""
    owner, _, attribute = name.rpartition(".")
    module = model.get_submodule(owner)
    keep = kept_indices(getattr(module, attribute).shape[axis], drop)
    rewrite(module, attribute, select(axis, keep))
