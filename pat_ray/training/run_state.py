"""What a run writes after every epoch, and how a resumed run reads it back.

One checkpoint file (``last.pt``) holds the pruned model (base name + architecture +
weights) and everything needed to continue mid-run: optimizer state, epoch and iteration,
the epoch history, the snapshot tracker, the pruning-schedule position and, for a latency
budget, the latency table. Every file is
written to a temp name and renamed, so a crash never leaves a half-written result.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from torch import nn

from pat_ray.config import Config, config_to_yaml
from pat_ray.core.architecture import Architecture
from pat_ray.training.checkpoint import Checkpoint, CheckpointError, atomic_write_text, read_checkpoint, save_checkpoint
from pat_ray.training.policies import SnapshotTracker
from pat_ray.training.pruner import Pruner
from pat_ray.training.records import EpochRecord, RunState

LAST, PREVIOUS, HISTORY = "last.pt", "previous.pt", "history.json"


class RunExistsError(FileExistsError):
    """``output_dir/name`` already holds a run, and the caller did not ask to continue it."""


def check_new_run(run_dir: Path) -> None:
    """Refuse to start a run over an earlier one; say what the user can do instead."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunExistsError(f"{run_dir} is a file; output_dir/name must be a folder")
    found = [name for name in (LAST, PREVIOUS, HISTORY) if (run_dir / name).exists()]
    if found:
        raise RunExistsError(
            f"{run_dir} already holds a run ({', '.join(found)}); nothing was changed. Continue it with "
            "`pat-ray run --resume` (run(..., resume=True)), choose another `name`, or delete the folder"
        )


def resume_point(run_dir: Path, warn: Callable[[str], None]) -> Path:
    """The newest readable checkpoint of the run in ``run_dir``: ``last.pt``, or the one it
    replaced when ``last.pt`` is damaged (``warn`` says so)."""
    last, previous = run_dir / LAST, run_dir / PREVIOUS
    if not last.exists() and not previous.exists():
        raise CheckpointError(last, f"does not exist: there is no run to resume in {run_dir}")
    try:
        RunState.from_checkpoint(read_checkpoint(last))  # raises CheckpointError naming what is wrong
        return last
    except CheckpointError as err:
        if not previous.is_file():
            raise
        state = RunState.from_checkpoint(read_checkpoint(previous))
        warn(f"warning: {err}; resuming from {previous} (epoch {state.epoch}) instead")
        return previous


def save_run_state(
    run_dir: Path,
    model: nn.Module,
    config: Config,
    input_shape: tuple[int, ...],
    num_classes: int,
    pruner: Pruner,
    state: RunState,
) -> Path:
    """Write ``last.pt`` (keeping the one it replaces as ``previous.pt``), ``history.json``
    and ``config.yaml``; returns the checkpoint's path."""
    path = run_dir / LAST
    save_checkpoint(
        path,
        model,
        config.model.name,
        pruner.architecture,
        input_shape,
        model_params={"num_classes": num_classes, **config.model.params},
        extra=state.to_extra(),
        backup=run_dir / PREVIOUS,
    )
    write_run_files(run_dir, config, state.history)
    return path


def write_run_files(run_dir: Path, config: Config, history: list[EpochRecord]) -> None:
    """``history.json`` and ``config.yaml`` beside a run's checkpoint, locally or from Ray."""
    atomic_write_text(run_dir / HISTORY, json.dumps([r.to_dict() for r in history], indent=1))
    atomic_write_text(run_dir / "config.yaml", config_to_yaml(config))


def restore_run_state(
    ckpt: Checkpoint, state: RunState, model: nn.Module, pruner: Pruner, tracker: SnapshotTracker
) -> None:
    """Bring a freshly built dense ``model``, its ``pruner`` and ``tracker`` to the saved state
    (the weights and optimizer are the caller's to load, on the shrunk model)."""
    try:
        pruner.restore(model, ckpt.architecture, state.pruner)
        snapshots = zip(state.tracker["snapshots"], state.tracker["epi"], state.tracker["mask_distances"])
        for snapshot, epi, distances in snapshots:
            tracker.snapshots.append(Architecture.from_dict(snapshot))
            tracker.epi.append(epi)
            tracker.mask_distances.append(distances)
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(ckpt.source, f"does not fit this run's model ({err})") from None
