"""Third-party modules the tracer does not know, declared by their authors: how a module maps
input channels to output channels, which of its parameters hold which channels, and what it
costs. Plugins register a ``LayerRule`` through ``pat_ray_register_layers``; the tracer, the
surgery and the cost model then treat the module like a built-in layer.

The registry lives here, as plain data the pure-torch tracer reads; the plugin layer fills it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.layers.family import Cut, LayerCall, LayerFamily, Rewrite, chained, kept_indices, select
from pat_ray.tracer.layout import Layout, Term

Side = Literal["in", "out"]
Maps = Literal["follows", "produces"]


@dataclass(frozen=True)
class LayerRule:
    """How instances of ``module_type`` treat channels (dim 1 of their input and output).

    ``maps``: ``follows``: output channel i is input channel i (a per-channel scale, a custom
    norm or activation): the module joins its input's group. ``produces``: its outputs are new
    channels (a conv- or linear-like layer), pruned independently of its inputs.
    ``params``: per parameter or buffer name, the axis that holds the ``out`` (and, for a
    ``produces`` layer, the ``in``) channels, e.g. ``{"weight": {"out": 0, "in": 1},
    "bias": {"out": 0}}``. Every tensor that holds channels must be listed: the rest is left
    as it is. ``counts``: integer attributes to keep in step, as (parameter, axis) whose size
    they equal, e.g. ``{"out_channels": ("weight", 0)}``. ``macs``: multiply-accumulates per
    (input, output) channel pair for one sample (``produces``), or per channel (``follows``),
    given the module and its input and output shapes; None counts none.
    """

    module_type: type[nn.Module]
    maps: Maps
    params: Mapping[str, Mapping[Side, int]]
    counts: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    macs: Callable[[nn.Module, tuple[int, ...], tuple[int, ...]], int] | None = None

    def __post_init__(self) -> None:
        if self.maps not in ("follows", "produces"):
            raise ValueError(f"LayerRule for {self.module_type.__name__}: maps must be 'follows' or 'produces'")
        for name, sides in self.params.items():
            if not sides or set(sides) - {"in", "out"}:
                raise ValueError(f"LayerRule for {self.module_type.__name__}: params[{name!r}] must map 'in'/'out'")
            if self.maps == "follows" and "in" in sides:
                raise ValueError(
                    f"LayerRule for {self.module_type.__name__}: a 'follows' layer has 'out' channels only"
                )

    def weight_axis(self, side: Side) -> int:
        """The axis of ``weight`` holding that side's channels (what criteria read), else 0."""
        return self.params.get("weight", {}).get(side, 0)


_rules: dict[type[nn.Module], LayerRule] = {}


def set_rules(rules: Mapping[type[nn.Module], LayerRule]) -> None:
    """Replace the known rules (the plugin registry calls this whenever it is rebuilt)."""
    _rules.clear()
    _rules.update(rules)


def rule_for(module: nn.Module) -> LayerRule | None:
    """The rule for ``module``'s exact type (a subclass may treat channels differently)."""
    return _rules.get(type(module))


def sync_counts(model: nn.Module) -> None:
    """After surgery: every declared count attribute equals its parameter's new size."""
    for module in model.modules():
        rule = rule_for(module)
        if rule is None:
            continue
        for attribute, (param, axis) in rule.counts.items():
            setattr(module, attribute, getattr(module, param).shape[axis])


class Declared(LayerFamily):
    """The family of one plugin-declared layer type: its ``LayerRule`` says everything."""

    counts_macs = True

    def __init__(self, rule: LayerRule) -> None:
        self.rule = rule

    def trace(self, call: LayerCall) -> Layout:
        """Join the input's group (``follows``) or start a new group (``produces``), with the
        declared tensors as members and the declared cost as a term."""
        builder, name, module, rule, where = call.builder, call.name, call.module, self.rule, call.where
        layout = call.on_dim1()
        in_shape, out_shape = call.in_shape, call.out_shape
        if layout.repeat != 1:
            raise UnsupportedModelError(f"{where}: a custom layer applied to flattened features")
        tensors = _declared_tensors(module, rule, where)
        learned = {p: t for p, t in tensors.items() if isinstance(t, nn.Parameter)}  # buffers are no params
        macs = rule.macs(module, in_shape, out_shape) if rule.macs is not None else 0
        in_width, out_width = builder.width(layout), out_shape[1]
        if rule.maps == "follows":
            for param, sides in rule.params.items():
                _check_size(tensors[param], sides["out"], in_width, where, param)
                builder.add_param(f"{name}.{param}", sides["out"], layout, where)
            per_out = sum(t.numel() for t in learned.values()) // max(in_width, 1)
            builder.add_term(Term(module=name, out=layout, macs_per_pair=macs, params_per_out=per_out))
            return layout
        for param, sides in rule.params.items():
            for side, axis in sides.items():
                _check_size(tensors[param], axis, in_width if side == "in" else out_width, where, param)
        builder.add_member(name, "in", layout, rule.weight_axis("in"))
        out = builder.new_group(out_width, name, pinned=name in builder.excluded)
        builder.add_member(name, "out", out, rule.weight_axis("out"))
        pairs = sum(t.numel() for p, t in learned.items() if len(rule.params[p]) == 2) // max(in_width * out_width, 1)
        per_out = sum(t.numel() for p, t in learned.items() if set(rule.params[p]) == {"out"}) // max(out_width, 1)
        builder.add_term(
            Term(
                module=name,
                out=out,
                inp=layout,
                macs_per_pair=macs,
                params_per_pair=pairs,
                params_per_out=per_out,
            )
        )
        return out

    def shrink(self, module: nn.Module, cut: Cut, rewrite: Rewrite) -> None:
        """Each declared tensor loses the dropped channels on each of its axes."""
        for param, sides in self.rule.params.items():
            tensor = getattr(module, param)
            steps = [
                select(axis, kept_indices(tensor.shape[axis], cut.drop_out if side == "out" else cut.drop_in))
                for side, axis in sides.items()
            ]
            rewrite(module, param, chained(steps))

    def macs(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """The declared MACs per channel pair (``produces``) or per channel (``follows``)."""
        rule = self.rule
        per_unit = rule.macs(module, tuple(inputs[0].shape), tuple(output.shape)) if rule.macs else 0
        units = inputs[0].shape[1] * output.shape[1] if rule.maps == "produces" else output.shape[1]
        return per_unit * units


def _declared_tensors(module: nn.Module, rule: LayerRule, where: str) -> dict[str, torch.Tensor]:
    tensors = {param: getattr(module, param, None) for param in rule.params}
    missing = [param for param, tensor in tensors.items() if not isinstance(tensor, torch.Tensor)]
    if missing:
        raise UnsupportedModelError(f"{where}: its LayerRule declares {missing}, which the module does not hold")
    return {param: tensor for param, tensor in tensors.items() if isinstance(tensor, torch.Tensor)}


def _check_size(tensor: torch.Tensor, axis: int, width: int, where: str, param: str) -> None:
    if tensor.dim() <= axis or tensor.shape[axis] != width:
        raise UnsupportedModelError(
            f"{where}: its LayerRule says {param!r} holds {width} channels on axis {axis}, "
            f"but it has shape {tuple(tensor.shape)}"
        )
