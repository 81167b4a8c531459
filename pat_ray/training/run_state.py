"""What a run writes after every epoch, and how a resumed run reads it back.

One checkpoint file (``last.pt``) holds the pruned model (base name + architecture +
weights) and everything needed to continue mid-run: optimizer state, epoch and iteration,
the epoch history, the snapshot tracker, the pruning-schedule position and, for a latency
budget, the latency table. Every file is
written to a temp name and renamed, so a crash never leaves a half-written result.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from torch import nn

from pat_ray.config import Config, config_to_yaml
from pat_ray.core.architecture import Architecture
from pat_ray.errors import CheckpointError
from pat_ray.plugins.recipes import ModelRecipe
from pat_ray.run_folder.files import CONFIG, HISTORY, LAST, PREVIOUS
from pat_ray.storage import Location
from pat_ray.training.checkpoint import Checkpoint, save_checkpoint
from pat_ray.training.records import EpochRecord, RunResult, StartedBy

if TYPE_CHECKING:
    pass


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

    def result(
        self, config: Config, architecture: dict, checkpoint: Path | str | None, wall_seconds: float
    ) -> RunResult:
        """The run's result as this state records it after its last epoch."""
        last = self.history[-1]
        return RunResult(
            config=config,
            history=self.history,
            trigger_epoch=self.trigger_epoch,
            final_accuracy=last.val_acc,
            dense_flops=self.dense_flops,
            final_flops=last.flops,
            train_flops=last.train_flops,
            dense_train_flops=self.dense_train_flops,
            wall_seconds=wall_seconds,
            architecture=architecture,
            checkpoint=checkpoint,
            trigger_position=self.trigger_position,
            started_by=cast(StartedBy | None, self.started_by),
        )


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
