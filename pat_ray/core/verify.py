"""The last line of defence after surgery: the pruned model must still run.

The tracer refuses every op it does not understand, so a pruned model should always run;
this check makes sure that a gap in that reasoning (or in a third-party surgery backend)
surfaces as an error naming the layer, at the moment of pruning, instead of as a model that
fails later in someone's training loop. It runs the model's forward on a one-sample batch with
its products computed on meta tensors (``ShapesOnly``): their kernels check the operands' shapes
as the real ones do, without the arithmetic, and the rest of the forward runs for real.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from pat_ray.core.cost.flops import hooked_forward
from pat_ray.errors import PrunedModelError
from pat_ray.tracer.graph import Example
from pat_ray.tracer.shape_record import nested_leaves
from pat_ray.tracer.shapes_only import products_on_meta as on_meta


def output_shapes(model: nn.Module, example: Example, products_on_meta: bool = True) -> list[tuple[int, ...]]:
    """The shapes of every tensor ``model`` returns for the first sample (eval mode, no grad).
    ``products_on_meta``: its products run on meta tensors (they check their operands' shapes as
    the real ones do); a model whose shapes depend on values (``ModelGraph.shapes_from_values``)
    computes them."""
    with on_meta(products_on_meta):
        return [tuple(t.shape) for t in _tensors(hooked_forward(model, example, {}))]


def check_pruned(
    model: nn.Module, example: Example, expected: list[tuple[int, ...]], products_on_meta: bool = True
) -> None:
    """Raise PrunedModelError unless the pruned ``model`` runs and returns ``expected`` shapes
    (``products_on_meta`` as in ``output_shapes``)."""
    try:
        got = output_shapes(model, example, products_on_meta)
    except Exception as err:
        where = _failing_layer(model, example, products_on_meta)
        raise PrunedModelError(
            f"the pruned model fails at {where} ({type(err).__name__}: {err}); "
            "pat_ray traced an op whose channels it did not follow correctly: please report this model"
        ) from err
    if got != expected:
        raise PrunedModelError(
            f"the pruned model returns tensors of shapes {got}, the model before pruning {expected}; "
            "pruning must keep the outputs' shapes"
        )


def _failing_layer(model: nn.Module, example: Example, products_on_meta: bool) -> str:
    """Which module's forward the failure happens in, found by running the model again with a
    hook on every module: only after a failure, so that the check itself stays one plain forward."""
    running: list[str] = []  # the modules whose forward is in progress, innermost last
    names = {module: name for name, module in model.named_modules() if module is not model}

    def enter(module: nn.Module, _args: Any) -> None:
        running.append(names[module])

    def leave(_module: nn.Module, _args: Any, _output: Any) -> None:
        running.pop()  # a hook that returns a value would replace the module's output

    hooks = [h for m in names for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        output_shapes(model, example, products_on_meta)
    except Exception:
        return f"layer {running[-1]!r}" if running else "an op of the top-level forward"
    finally:
        for hook in hooks:
            hook.remove()
    return "a layer that failed only once (the failure did not repeat)"


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    return nested_leaves(value, torch.is_tensor)
