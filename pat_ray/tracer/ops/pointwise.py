"""Element-wise ops no rule lists by name, recognised from torch's own op metadata: an ATen
op tagged ``torch.Tag.pointwise`` computes each output element from the elements at the same
(broadcast) position of its inputs, which is exactly what the ``binary`` rule follows (one
tensor argument: its channels pass). So ``clamp_min``, ``copysign``, ``logaddexp``, ``xlogy``,
``erfc``, ``torch.special``'s functions and their in-place forms need no list of their own."""

from __future__ import annotations

import functools

import torch

_NOT_TENSORS = {"equal"}  # tagged pointwise, but answers one bool


def is_pointwise(op: str, target: object) -> bool:
    """Whether a ``call_function`` / ``call_method`` target is a torch op tagged pointwise."""
    if op == "call_method":
        return isinstance(target, str) and hasattr(torch.Tensor, target) and _tagged_pointwise(target)
    name = getattr(target, "__name__", None)
    if op != "call_function" or not isinstance(name, str):
        return False
    special = getattr(torch.special, name.removeprefix("special_"), None)
    return (getattr(torch, name, None) is target or special is target) and _tagged_pointwise(name)


@functools.cache
def _tagged_pointwise(name: str) -> bool:
    if name in _NOT_TENSORS or name.startswith("_"):
        return False
    try:
        packet = getattr(torch.ops.aten, name)
    except (AttributeError, RuntimeError):
        return False
    return any(torch.Tag.pointwise in getattr(packet, overload).tags for overload in packet.overloads())
