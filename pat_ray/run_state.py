"""What a run writes after every epoch, and how a resumed run reads it back.

One checkpoint file (``last.pt``) holds the pruned model (base name + architecture +
weights) and everything needed to continue mid-run: optimizer state, epoch and iteration,
the epoch history, the snapshot tracker, the pruning-schedule position and, for a latency
budget, the latency table. Every file is
written to a temp name and renamed, so a crash never leaves a half-written result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from pat_ray.checkpoint import Checkpoint, atomic_write_text, save_checkpoint
from pat_ray.config import Config, config_to_yaml
from pat_ray.core.architecture import Architecture
from pat_ray.data import DataBundle
from pat_ray.policies import SnapshotTracker
from pat_ray.pruner import Pruner


@dataclass
class ResumeState:
    epoch: int
    iteration: int
    trigger_epoch: int | None
    history: list[dict[str, Any]]
    optimizer: dict
    model_state: dict


def save_run_state(
    run_dir: Path,
    model: nn.Module,
    config: Config,
    data: DataBundle,
    pruner: Pruner,
    optimizer,
    history: list[dict[str, Any]],
    tracker: SnapshotTracker,
    iteration: int,
    trigger_epoch: int | None,
    dense_train_flops: float,
) -> Path:
    path = run_dir / "last.pt"
    save_checkpoint(
        path,
        model,
        config.model.name,
        pruner.architecture,
        (1, *data.input_shape),
        model_params={"num_classes": data.num_classes, **config.model.params},
        extra={
            "epoch": history[-1]["epoch"],
            "iteration": iteration,
            "trigger_epoch": trigger_epoch,
            "optimizer": optimizer.state_dict(),
            "history": history,
            "tracker": tracker.state(),
            "pruner": pruner.state(),
            "dense_flops": pruner.dense_cost.flops,
            "dense_train_flops": dense_train_flops,
            "latency_table": pruner.latency.to_dict() if pruner.latency else None,
        },
    )
    atomic_write_text(run_dir / "history.json", json.dumps(history, indent=1))
    atomic_write_text(run_dir / "config.yaml", config_to_yaml(config))
    return path


def load_run_state(ckpt: Checkpoint, model: nn.Module, pruner: Pruner, tracker: SnapshotTracker) -> ResumeState:
    """Bring a freshly built dense ``model``, ``pruner`` and ``tracker`` to the saved state."""
    extra = ckpt.extra
    pruner.restore(model, ckpt.architecture, extra["pruner"])
    for snapshot, epi, distances in zip(
        extra["tracker"]["snapshots"], extra["tracker"]["epi"], extra["tracker"]["mask_distances"]
    ):
        tracker.snapshots.append(Architecture.from_dict(snapshot))
        tracker.epi.append(epi)
        tracker.mask_distances.append(distances)
    return ResumeState(
        epoch=extra["epoch"],
        iteration=extra["iteration"],
        trigger_epoch=extra["trigger_epoch"],
        history=extra["history"],
        optimizer=extra["optimizer"],
        model_state=ckpt.state_dict,
    )
