"""Checks that need this machine, done before anything is built: a run that cannot write its
results or use its device fails in the first second, naming the config field, instead of
after a whole epoch. (What the config alone decides is checked when it is validated.)"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import torch
from pyarrow.fs import FileType

from pat_ray.config import Config
from pat_ray.config.plan import iterations_per_epoch, plan_pruning
from pat_ray.errors import ConfigError, first_line
from pat_ray.storage import OBJECT_STORES, Location


def check_runnable(config: Config, local: bool = True, source: str = "config") -> None:
    """Raise ConfigError listing every field this machine cannot honour.

    ``local``: the run trains in this process; on Ray, GPU workers pick their own device."""
    where = Location.of(config.output_dir)
    output = _output_problems(where.local_path) if where.is_local else _store_problems(where)
    problems = [*output, *_device_problems(config, local)]
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


def _store_problems(where: Location) -> list[str]:
    """A store that cannot be reached, or a bucket that does not exist, fails now, naming the
    field and the URI, not at the first write with the store's own message."""
    try:
        fs, path = where.filesystem()
        bucket = path.strip("/").split("/", 1)[0]
        if urlsplit(where.uri).scheme in OBJECT_STORES and fs.get_file_info(bucket).type == FileType.NotFound:
            return [
                f"output_dir: {where.uri}: the bucket {bucket!r} does not exist (or these credentials cannot see it)"
            ]
        fs.get_file_info(path)
    except Exception as err:  # pyarrow and fsspec raise what their backends raise
        return [f"output_dir: cannot reach {where.uri}: {first_line(err)}"]
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


def check_schedule(config: Config, local: bool = True, source: str = "config") -> list[str]:
    """What only the data and the model can tell, checked before any training: the pruning steps
    fit the schedule once the data says how long an epoch is, the model reads as many input
    channels as the data has and returns one logit per class, and the labels are classes.
    ConfigError names the fields to change (and values that would work); returns the plan's
    notes (a start policy that cannot fire before its latest start)."""
    from collections.abc import Sized
    from typing import cast

    from pat_ray.plugins.recipes import ModelRecipe, make_data, offered_by
    from pat_ray.training.setup import check_classifier, check_input_channels

    section = config.data
    data = make_data(section.name, section.target, section.params, None, section.num_classes, section.input_shape)
    recipe = ModelRecipe.of(config.model.name, config.model.target, config.model.params)
    model, recipe = recipe.build("model", None, **offered_by(data))
    problems = []
    try:
        check_input_channels(model, data, recipe)
        check_classifier(model, data, recipe, torch.zeros(1, *data.input_shape))
    except ValueError as err:
        problems.append(f"model / data: {err}")
    workers = 1 if local else config.scaling.num_workers
    plan = plan_pruning(config, iterations_per_epoch(len(cast(Sized, data.train)), config.data.batch_size, workers))
    problems += plan.problems
    if problems:
        raise ConfigError(source, problems)
    return plan.notes
