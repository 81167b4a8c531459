"""What a run writes after every epoch, and how a resumed run reads it back.

One checkpoint file (``last.pt``) holds the pruned model (base name + architecture +
weights) and everything needed to continue mid-run: optimizer state, epoch and iteration,
the epoch history, the snapshot tracker, the pruning-schedule position and, for a latency
budget, the latency table. Every file is
written to a temp name and renamed, so a crash never leaves a half-written result.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from pat_ray.config import Config, config_to_yaml
from pat_ray.core.architecture import Architecture
from pat_ray.errors import CheckpointError, RunExistsError
from pat_ray.plugins.recipes import ModelRecipe
from pat_ray.storage import Location
from pat_ray.training.checkpoint import Checkpoint, read_checkpoint, save_checkpoint
from pat_ray.training.collective import WrappingReporter
from pat_ray.training.records import EpochRecord
from pat_ray.training.run_files import CONFIG, HISTORY, LAST, PREVIOUS

if TYPE_CHECKING:
    from pat_ray.training.collective import Reporter


@dataclass
class RunState:
    """Everything a run checkpoint holds besides the model: what ``--resume`` continues from."""

    epoch: int  # the last finished epoch
    iteration: int
    trigger_epoch: int | None
    history: list[EpochRecord]
    optimizer: dict
    tracker: dict  # SnapshotTracker.state()
    pruner: dict  # Pruner.state()
    dense_flops: int
    dense_train_flops: float
    latency_table: dict | None
    trigger_position: float | None = None  # epochs into training (checkpoints before snapshots within epochs: unset)
    started_by: str | None = None  # "policy" or "latest_start" (older checkpoints: unset)

    def to_extra(self) -> dict[str, Any]:
        return {**asdict(self), "history": [r.to_dict() for r in self.history]}

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> RunState:
        """The run state in ``ckpt``; CheckpointError naming the file when it is not a run's."""
        names = [f.name for f in fields(cls) if f.name in ckpt.extra or f.default is MISSING]
        missing = [name for name in names if name not in ckpt.extra]
        if missing:
            raise CheckpointError(ckpt.source, f"is a model checkpoint, not a run's (it lacks {', '.join(missing)})")
        try:
            data = {name: ckpt.extra[name] for name in names}
            return cls(**{**data, "history": [EpochRecord.from_dict(r) for r in data["history"]]})
        except (KeyError, TypeError) as err:
            raise CheckpointError(ckpt.source, f"its run history is malformed ({err!r})") from None


def check_new_run(run_dir: Location) -> None:
    """Refuse to start a run over an earlier one; say what the user can do instead. Version
    folders make this rare: only two runs writing to one store within a second meet it."""
    if run_dir.is_file():
        raise RunExistsError(f"{run_dir} is a file; output_dir/name must be a folder")
    found = [name for name in (LAST, PREVIOUS, HISTORY) if (run_dir / name).exists()]
    if found:
        raise RunExistsError(
            f"{run_dir} already holds a run ({', '.join(found)}); nothing was changed. Start again (a new "
            f"version folder), or continue that run with `pat-ray run --resume {shlex.quote(str(run_dir))}`"
        )


def resume_point(run_dir: Location, warn: Callable[[str], None], scratch: Path) -> Path:
    """The newest readable checkpoint of the run in ``run_dir``, as a local file (a copy in
    ``scratch`` when the run folder is in a store): ``last.pt``, or the one it replaced when
    ``last.pt`` is damaged (``warn`` says so)."""
    last, previous = run_dir / LAST, run_dir / PREVIOUS
    if not last.exists() and not previous.exists():
        raise CheckpointError(str(last), f"does not exist: there is no run to resume in {run_dir}")
    try:
        return _readable(last, scratch)
    except CheckpointError as err:
        if not previous.is_file():
            raise
        local = _readable(previous, scratch)
        state = RunState.from_checkpoint(read_checkpoint(local))
        warn(f"warning: {err}; resuming from {previous} (epoch {state.epoch}) instead")
        return local


def _readable(checkpoint: Location, scratch: Path) -> Path:
    """``checkpoint`` as a local file, checked whole (raises CheckpointError naming what is wrong)."""
    if checkpoint.is_local:
        RunState.from_checkpoint(read_checkpoint(checkpoint.local_path))
        return checkpoint.local_path
    if not checkpoint.is_file():
        raise CheckpointError(str(checkpoint), "does not exist")
    local = checkpoint.download(scratch / checkpoint.name)
    try:
        RunState.from_checkpoint(read_checkpoint(local))
    except CheckpointError as err:
        raise CheckpointError(str(checkpoint), err.problem) from None
    return local


def save_run_state(
    run_dir: Path,
    model: nn.Module,
    config: Config,
    recipe: ModelRecipe,
    architecture: Architecture,
    input_shape: tuple[int, ...],
    state: RunState,
) -> Path:
    """Write ``last.pt`` (keeping the one it replaces as ``previous.pt``), ``history.json``
    and ``config.yaml``; returns the checkpoint's path."""
    path = run_dir / LAST
    save_checkpoint(
        path,
        model,
        recipe,
        architecture,
        input_shape,
        extra={**state.to_extra(), "config": config.model_dump(mode="json")},  # what --resume compares with
        backup=run_dir / PREVIOUS,
    )
    write_run_files(run_dir, config, state.history)
    return path


def write_run_files(run_dir: Path | Location, config: Config, history: list[EpochRecord]) -> None:
    """``history.json`` and ``config.yaml`` beside a run's checkpoint, locally, from Ray or in a store."""
    folder = Location.of(run_dir)
    (folder / HISTORY).write_text(json.dumps([r.to_dict() for r in history], indent=1))
    (folder / CONFIG).write_text(config_to_yaml(config))


class StoreMirror(WrappingReporter):
    """A reporter that copies a run's files from its local stage to its run folder in a store
    after every epoch, the checkpoint first (``history.json`` never names an epoch the
    folder's checkpoint lacks), then hands the epoch on to the reporter it wraps."""

    def __init__(self, inner: Reporter, stage: Path, folder: Location, config: Config) -> None:
        super().__init__(inner)
        self.stage, self.folder = stage, folder
        (folder / CONFIG).write_text(config_to_yaml(config))  # the config as given, store URI and all

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        if checkpoint is not None:
            (self.folder / LAST).upload(checkpoint, backup=self.folder / PREVIOUS)
            (self.folder / HISTORY).upload(self.stage / HISTORY)
        self.inner.report(metrics, checkpoint)
