"""Native surgery: physically remove channels from Conv / Linear / BatchNorm modules.

Each shrunk parameter is a new ``nn.Parameter`` (mutating ``.data`` in place would leave
autograd nodes with the old shape alive in any graph still referenced). The optimizer is
rewired to the new parameters, and each state tensor shaped like a parameter (SGD
momentum, Adam moments) is sliced with the same indices, so training continues warm.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from pat_ray.core.architecture import Architecture
from pat_ray.core.custom_layers import LayerRule, rule_for, sync_counts
from pat_ray.core.graph import CONV_TYPES, NORM_TYPES, TRANSPOSED_CONV_TYPES, ModelGraph, Role

Reindex = Callable[[torch.Tensor], torch.Tensor]
Rewrite = Callable[[nn.Module, str, Reindex], None]  # replace module.<name> by reindex(it)


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
        drop_out = removed.get((name, "out"), _cat(None))
        drop_in = removed.get((name, "in"), _cat(None))
        if (rule := rule_for(module)) is not None:
            _shrink_custom(module, rule, drop_out, drop_in, state)
        elif isinstance(module, CONV_TYPES):
            _shrink_conv(module, drop_out, drop_in, roles[name], state)
        elif isinstance(module, TRANSPOSED_CONV_TYPES):
            _shrink_transposed(module, drop_out, drop_in, state)
        elif isinstance(module, nn.Linear):
            _shrink_linear(module, drop_out, drop_in, state)
        elif isinstance(module, NORM_TYPES):
            _shrink_norm(module, drop_out, state)
        elif isinstance(module, nn.LayerNorm):
            _shrink_layer_norm(module, drop_out, state)
        elif isinstance(module, nn.GroupNorm):
            _shrink_group_norm(module, drop_out, state)
        else:
            raise TypeError(f"native surgery cannot shrink {name!r} ({type(module).__name__})")
    state.rewire()
    sync_counts(model)


def channels_to_drop(
    graph: ModelGraph, architecture: Architecture
) -> tuple[dict[tuple[str, str], torch.Tensor], dict[str, set[Role]]]:
    """Per ``(module name, "out" | "in" | "param")`` the sorted channel indices ``architecture`` removes,
    and the roles each touched module plays (a surgery backend's whole to-do list)."""
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
        drop = _complement(torch.tensor(architecture.kept[group.name], dtype=torch.long), group.size)
        if drop.numel() == 0:
            continue
        for member in group.members:
            axis = member.role if member.role in ("in", "param") else "out"
            removed[(member.module, axis)].append(member.positions(drop))
            roles[member.module].add(member.role)
    return {key: _cat(parts) for key, parts in removed.items()}, dict(roles)


def _complement(indices: torch.Tensor, size: int) -> torch.Tensor:
    """The indices of ``range(size)`` that are not in ``indices``, sorted."""
    mask = torch.ones(size, dtype=torch.bool)
    mask[indices] = False
    return mask.nonzero().flatten()


def _cat(parts: list[torch.Tensor] | None) -> torch.Tensor:
    if not parts:
        return torch.empty(0, dtype=torch.long)
    merged: torch.Tensor = torch.unique(torch.cat(parts))
    return merged


def kept_indices(size: int, drop: torch.Tensor) -> torch.Tensor:
    """The sorted indices of ``range(size)`` that survive removing ``drop``."""
    return _complement(drop, size) if drop.numel() else torch.arange(size)


def _select(dim: int, index: torch.Tensor) -> Reindex:
    def fn(t: torch.Tensor) -> torch.Tensor:
        if index.numel() == t.shape[dim]:  # indices are sorted and unique: nothing to drop
            return t
        return t.index_select(dim, index.to(t.device))

    return fn


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


def _shrink_conv(
    conv: _ConvNd, drop_out: torch.Tensor, drop_in: torch.Tensor, roles: set[Role], rewrite: Rewrite
) -> None:
    keep_out = kept_indices(conv.out_channels, drop_out)
    if "depthwise" in roles:
        rewrite(conv, "weight", _select(0, keep_out))
        conv.groups = conv.in_channels = len(keep_out)
    elif "grouped" in roles:
        rewrite(conv, "weight", _grouped_reindex(conv, keep_out))
        conv.in_channels = len(keep_out)
    else:
        keep_in = kept_indices(conv.in_channels, drop_in)  # all of them for groups > 1: its inputs stay
        by_out = _select(0, keep_out)
        by_in = _select(1, keep_in) if conv.groups == 1 else _chained([])
        rewrite(conv, "weight", lambda t: by_in(by_out(t)))
        conv.in_channels = len(keep_in)
    rewrite(conv, "bias", _select(0, keep_out))
    conv.out_channels = len(keep_out)


def _shrink_custom(
    module: nn.Module, rule: LayerRule, drop_out: torch.Tensor, drop_in: torch.Tensor, rewrite: Rewrite
) -> None:
    """A module a plugin declared: each listed tensor loses the dropped channels on each axis."""
    for param, sides in rule.params.items():
        tensor = getattr(module, param)
        steps = [
            _select(axis, kept_indices(tensor.shape[axis], drop_out if side == "out" else drop_in))
            for side, axis in sides.items()
        ]
        rewrite(module, param, _chained(steps))


def _chained(steps: list[Reindex]) -> Reindex:
    def fn(tensor: torch.Tensor) -> torch.Tensor:
        for step in steps:
            tensor = step(tensor)
        return tensor

    return fn


def _shrink_transposed(conv: _ConvNd, drop_out: torch.Tensor, drop_in: torch.Tensor, rewrite: Rewrite) -> None:
    """A transposed conv (groups=1): its weight is (in, out, k...)."""
    keep_out, keep_in = kept_indices(conv.out_channels, drop_out), kept_indices(conv.in_channels, drop_in)
    by_in, by_out = _select(0, keep_in), _select(1, keep_out)
    rewrite(conv, "weight", lambda t: by_out(by_in(t)))
    rewrite(conv, "bias", _select(0, keep_out))
    conv.in_channels, conv.out_channels = len(keep_in), len(keep_out)


def _grouped_reindex(conv: _ConvNd, keep: torch.Tensor) -> Reindex:
    """Grouped conv with in == out channels: keep the same channels on both sides, so
    each output row keeps the inputs of its own conv group that survived."""
    groups, width = conv.groups, conv.out_channels // conv.groups
    per_group = keep.reshape(groups, -1)  # raises unless every group keeps the same count
    if not torch.equal(per_group // width, torch.arange(groups)[:, None].expand_as(per_group)):
        raise ValueError("grouped conv: kept channels are not balanced across conv groups")
    local = per_group - torch.arange(groups)[:, None] * width

    def fn(t: torch.Tensor) -> torch.Tensor:
        rows = t.index_select(0, keep.to(t.device)).reshape(groups, -1, *t.shape[1:])
        parts = [rows[g].index_select(1, local[g].to(t.device)) for g in range(groups)]
        return torch.cat(parts)

    return fn


def _shrink_linear(linear: nn.Linear, drop_out: torch.Tensor, drop_in: torch.Tensor, rewrite: Rewrite) -> None:
    keep_out = kept_indices(linear.out_features, drop_out)
    keep_in = kept_indices(linear.in_features, drop_in)
    by_out, by_in = _select(0, keep_out), _select(1, keep_in)
    rewrite(linear, "weight", lambda t: by_in(by_out(t)))
    rewrite(linear, "bias", by_out)
    linear.out_features, linear.in_features = len(keep_out), len(keep_in)


def _shrink_param(model: nn.Module, name: str, axis: int, drop: torch.Tensor, rewrite: Rewrite) -> None:
    """A per-channel parameter or buffer (a layer scale, say), sliced along its channel axis."""
    owner, _, attribute = name.rpartition(".")
    module = model.get_submodule(owner)
    keep = kept_indices(getattr(module, attribute).shape[axis], drop)
    rewrite(module, attribute, _select(axis, keep))


def _shrink_norm(norm: _NormBase, drop: torch.Tensor, rewrite: Rewrite) -> None:
    keep = kept_indices(norm.num_features, drop)
    for name in ("weight", "bias", "running_mean", "running_var"):
        rewrite(norm, name, _select(0, keep))
    norm.num_features = len(keep)


def _shrink_layer_norm(norm: nn.LayerNorm, drop: torch.Tensor, rewrite: Rewrite) -> None:
    """A LayerNorm over the channels alone (the tracer pins any other)."""
    keep = kept_indices(norm.normalized_shape[0], drop)
    for name in ("weight", "bias"):
        rewrite(norm, name, _select(0, keep))
    norm.normalized_shape = (len(keep),)


def _shrink_group_norm(norm: nn.GroupNorm, drop: torch.Tensor, rewrite: Rewrite) -> None:
    """A GroupNorm whose channels the selection shrank equally in each of its groups."""
    keep = kept_indices(norm.num_channels, drop)
    for name in ("weight", "bias"):
        rewrite(norm, name, _select(0, keep))
    norm.num_channels = len(keep)
