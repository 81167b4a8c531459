"""Checks that need this machine, done before anything is built: a run that cannot write its
results or use its device fails in the first second, naming the config field, instead of
after a whole epoch. (What the config alone decides is checked when it is validated.)"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pat_ray.config import Config, ConfigError


def check_runnable(config: Config, local: bool = True, source: str = "config") -> None:
    """Raise ConfigError listing every field this machine cannot honour.

    ``local``: the run trains in this process; on Ray, GPU workers pick their own device."""
    problems = [*_output_problems(Path(config.output_dir)), *_device_problems(config, local)]
    if problems:
        raise ConfigError(source, problems)


def _output_problems(output_dir: Path) -> list[str]:
    """Where results would go must be creatable and writable; nothing is created here."""
    existing = output_dir.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return [f"output_dir: {str(output_dir)!r} cannot be created: {str(existing)!r} is a file"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"output_dir: cannot write results to {str(output_dir)!r} ({str(existing)!r} is not writable)"]
    return []


def _device_problems(config: Config, local: bool) -> list[str]:
    training = config.training
    cuda = torch.cuda.is_available()
    on_gpu = (training.device != "cpu" and cuda) if local else config.scaling.use_gpu
    problems = []
    if local and training.device == "cuda" and not cuda:
        problems.append("training.device: 'cuda', but this machine has no CUDA device; use auto or cpu")
    if training.precision == "fp16" and not on_gpu:
        problems.append("training.precision: fp16 needs a CUDA device; use bf16 or fp32 on a CPU")
    return problems
