"""Run a model for its shapes, not its numbers: products computed on meta tensors.

The tracer's recording run and the check after surgery need every tensor's shape and need
every op to meet inputs of the shapes it will meet in training; neither reads a value. Most
of a forward's time is in its products (convolutions, linear layers, matmuls, attention),
whose result shape torch's meta kernels compute without the arithmetic, and which check
their operands' shapes as the real kernels do (a convolution handed the wrong number of
channels raises the same error). Under :class:`ShapesOnly` such a product returns zeros of
the shape, dtype, strides and device the real one would have; every other op runs as usual
on what flows through, so the model's own Python, views and elementwise ops run unchanged.

What this gives up: the values after a product are zeros, so an op whose result *shape*
depends on values (``nonzero``, a boolean mask) would see different shapes; the tracer
refuses control flow on values anyway. Where a product cannot run on meta (a tensor
subclass, a quantized weight, autocast) or where its result's strides are the real kernel's
own choice (a convolution or attention whose operands are not in plain row-major layout), it
runs for real.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

# Products whose real kernel picks its result's strides by rules of its device (channels-last
# convolutions, the CPU attention kernel's head-major output) that the meta kernel does not share.
_DEVICE_LAYOUT = frozenset(
    {
        F.conv1d,
        F.conv2d,
        F.conv3d,
        F.conv_transpose1d,
        F.conv_transpose2d,
        F.conv_transpose3d,
        F.scaled_dot_product_attention,
    }
)
_PRODUCTS = _DEVICE_LAYOUT | frozenset(
    {
        F.linear,
        F.bilinear,
        torch.matmul,
        torch.Tensor.matmul,
        torch.Tensor.__matmul__,
        torch.mm,
        torch.Tensor.mm,
        torch.bmm,
        torch.Tensor.bmm,
        torch.addmm,
        torch.baddbmm,
        torch.einsum,
    }
)


def products_on_meta(enabled: bool = True) -> AbstractContextManager[object]:
    """``ShapesOnly`` where ``enabled``, else nothing: the runs that fall back to real products
    (a graph whose shapes follow values) keep one ``with``."""
    return ShapesOnly() if enabled else nullcontext()


class ShapesOnly(TorchFunctionMode):
    """Products return zeros of their result's layout instead of computing it (see the module)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _PRODUCTS:
            return func(*args, **kwargs)
        tensors = [t for t in _flat((*args, *kwargs.values())) if isinstance(t, torch.Tensor)]
        if not _on_meta_is_exact(tensors) or (func in _DEVICE_LAYOUT and not all(map(_plainly_laid_out, tensors))):
            return func(*args, **kwargs)
        try:
            result = func(*_meta_twins(args), **dict(zip(kwargs, _meta_twins(tuple(kwargs.values())))))
        except Exception:  # a shape error, or an argument meta cannot take: the real call says which
            return func(*args, **kwargs)
        device = tensors[0].device
        if isinstance(result, torch.Tensor):
            return _zeros_like_meta(result, device)
        return type(result)(_zeros_like_meta(t, device) for t in result)


def _flat(values: tuple[Any, ...]) -> list[Any]:
    """Products take tensors as arguments or, for ``einsum``, in one list."""
    return [v for value in values for v in (value if isinstance(value, list | tuple) else (value,))]


def _on_meta_is_exact(tensors: list[torch.Tensor]) -> bool:
    """Plain dense tensors outside autocast (whose casts meta tensors would not see)."""
    if not tensors:
        return False
    for t in tensors:
        if type(t) not in (torch.Tensor, torch.nn.Parameter) or t.layout is not torch.strided or t.is_quantized:
            return False
        if t.is_meta or torch.is_autocast_enabled(t.device.type):
            return False
    return True


def _plainly_laid_out(tensor: torch.Tensor) -> bool:
    """Row-major strides, size-1 axes included: the one layout on which a ``_DEVICE_LAYOUT``
    product's meta kernel and real kernel agree; any other (channels-last, a transposed query,
    one a size-1 axis makes ambiguous) runs for real."""
    expected, stride = [], 1
    for size in reversed(tensor.shape):
        expected.append(stride)
        stride *= size
    return tensor.stride() == tuple(reversed(expected))


def _meta_twins(values: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(type(v)(_meta_twin(t) for t in v) if isinstance(v, list | tuple) else _meta_twin(v) for v in values)


def _meta_twin(value: Any) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")


def _zeros_like_meta(value: Any, device: torch.device) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=device).zero_()
