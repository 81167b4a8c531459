"""A prune that fails leaves the model and its optimizer as they were.

Surgery changes a model in place: modules get new parameters, buffers and size attributes, the
optimizer new parameters and sliced state. When the pruned model then fails its check (or a
backend raises half-way), the caller must not be left holding a model that no longer runs.
Nothing here copies a tensor: surgery makes new ones and leaves the old ones alone, so keeping
references to the old ones (and each parameter's data) is enough to put them back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class _ModuleState:
    module: nn.Module
    attributes: dict[str, Any]  # the module's __dict__: sizes such as out_channels, hooks
    parameters: dict[str, nn.Parameter | None]
    buffers: dict[str, torch.Tensor | None]
    children: dict[str, nn.Module | None]


@dataclass(frozen=True)
class _OptimizerState:
    optimizer: torch.optim.Optimizer
    state: dict[Any, Any]
    params: list[list[Any]]  # each param group's list of parameters


def _saved_modules(model: nn.Module) -> list[_ModuleState]:
    return [
        _ModuleState(
            module, dict(module.__dict__), dict(module._parameters), dict(module._buffers), dict(module._modules)
        )
        for module in model.modules()
    ]


def _restore_module(saved: _ModuleState) -> None:
    module = saved.module
    module.__dict__.clear()
    module.__dict__.update(saved.attributes)
    module._parameters.clear()
    module._parameters.update(saved.parameters)
    module._buffers.clear()
    module._buffers.update(saved.buffers)
    module._modules.clear()
    module._modules.update(saved.children)


@contextmanager
def undone_on_failure(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Iterator[None]:
    """Run the block; should it raise, put ``model`` (every module's parameters, buffers,
    submodules and attributes, each parameter's data) and ``optimizer`` (its state and
    parameter groups) back as they were before it, then re-raise. The caller's references to
    the model's parameters stay valid either way."""
    modules = _saved_modules(model)
    data = [(parameter, parameter.data) for parameter in model.parameters()]
    saved_optimizer = None
    if optimizer is not None:
        saved_optimizer = _OptimizerState(
            optimizer, dict(optimizer.state), [list(group["params"]) for group in optimizer.param_groups]
        )
    try:
        yield
    except BaseException:
        for saved in modules:
            _restore_module(saved)
        for parameter, tensor in data:
            parameter.data = tensor
        if saved_optimizer is not None:
            saved_optimizer.optimizer.state.clear()
            saved_optimizer.optimizer.state.update(saved_optimizer.state)
            for group, params in zip(saved_optimizer.optimizer.param_groups, saved_optimizer.params, strict=True):
                group["params"] = params
        raise
