"""Checkpoint format: enough to rebuild a pruned model from its base model's name.

A checkpoint holds the base model's registry name and build parameters, the input shape
used for tracing, the architecture relative to the *base* model, the state dict, and any
extra training state (optimizer, epoch, EPI history). Loading rebuilds the base model,
applies the architecture with native surgery and loads the weights. Writes go to a temp
file in the same directory, then ``os.replace``: a crash never leaves a half-written file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from pat_ray.core.architecture import Architecture
from pat_ray.core.groups import trace_channel_groups
from pat_ray.core.surgery import apply_architecture

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    model_name: str
    model_params: dict[str, Any]
    input_shape: tuple[int, ...]
    architecture: Architecture
    state_dict: dict[str, torch.Tensor]
    extra: dict[str, Any] = field(default_factory=dict)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temp file next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    model_name: str,
    architecture: Architecture,
    input_shape: tuple[int, ...],
    model_params: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Save ``model`` (pruned to ``architecture``, relative to the base model) atomically."""
    atomic_torch_save(
        {
            "format_version": FORMAT_VERSION,
            "model_name": model_name,
            "model_params": dict(model_params or {}),
            "input_shape": list(input_shape),
            "architecture": architecture.to_dict(),
            "state_dict": model.state_dict(),
            "extra": dict(extra or {}),
        },
        path,
    )


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    data = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a pat_ray checkpoint (format {FORMAT_VERSION})")
    return Checkpoint(
        model_name=data["model_name"],
        model_params=data["model_params"],
        input_shape=tuple(data["input_shape"]),
        architecture=Architecture.from_dict(data["architecture"]),
        state_dict=data["state_dict"],
        extra=data["extra"],
    )


def build_pruned_model(
    model_name: str,
    model_params: dict[str, Any],
    architecture: Architecture,
    input_shape: tuple[int, ...],
) -> nn.Module:
    """The registered base model, physically pruned to ``architecture``."""
    from pat_ray.registry import get_registry

    model = get_registry().create("model", model_name, **model_params)
    graph = trace_channel_groups(model, torch.zeros(1, *input_shape[1:]))
    apply_architecture(model, graph, architecture)
    return model


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Rebuild the pruned model saved at ``path``; returns it with the checkpoint's contents."""
    ckpt = read_checkpoint(path, map_location)
    model = build_pruned_model(ckpt.model_name, ckpt.model_params, ckpt.architecture, ckpt.input_shape)
    model.load_state_dict(ckpt.state_dict)
    return model.to(map_location), ckpt
