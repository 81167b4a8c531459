"""What a PaT run trains with and where it stands: ``Run`` (built once from the config, and
from a checkpoint when resuming) and ``Progress`` (what changes as the loop goes). Kept apart
from the loop in ``engine.py`` so that it reads as training, not as construction."""

from __future__ import annotations

import warnings
from collections.abc import Sized
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import DataLoader

from pat_ray.config import Config, ConfigError
from pat_ray.config.plan import plan_pruning
from pat_ray.core.cost.latency import LatencyTable
from pat_ray.core.selection import Budget
from pat_ray.plugins.registry import get_plugin_manager, get_registry
from pat_ray.training.checkpoint import Checkpoint, CheckpointError
from pat_ray.training.collective import Collective, Reporter
from pat_ray.training.latency_budget import run_latency_table
from pat_ray.training.policies import SnapshotTracker
from pat_ray.training.pruner import Pruner
from pat_ray.training.records import EpochRecord, StartedBy
from pat_ray.training.run_state import RunState, restore_run_state
from pat_ray.training.setup import autocast as run_autocast
from pat_ray.training.setup import build_run, make_optimizer

BACKWARD_FACTOR = 3  # training FLOPs per sample = forward + backward (~2x forward)


class PlanWarning(UserWarning):
    """The start policy cannot fire before its latest start in this schedule (pruning starts there)."""


@dataclass
class Taken:
    """One snapshot taken in the epoch under way."""

    position: float  # epochs into training
    epi: float | None
    counts: list[int]
    seconds: float


@dataclass
class Progress:
    """What changes as the run goes: position, the trigger, the cost so far, the history."""

    epoch: int = 0  # the last finished epoch
    iteration: int = 0
    trigger_epoch: int | None = None  # the epoch in which pruning started (0: at initialization)
    trigger_position: float | None = None  # where exactly, in epochs (2.25: a quarter into epoch 3)
    started_by: StartedBy | None = None  # the start policy, or its latest start
    train_flops: float = 0.0
    history: list[EpochRecord] = field(default_factory=list)
    snapshots: list[Taken] = field(default_factory=list)  # taken in the epoch under way


@dataclass
class Run:
    """What the loop trains with, built once from the config (and a checkpoint, resuming)."""

    config: Config
    collective: Collective
    reporter: Reporter
    hooks: Any  # the plugin manager's hook relay
    model: nn.Module
    net: nn.Module  # the model as the collective wraps it (DDP on Ray workers)
    device: torch.device
    layout: torch.memory_format
    pruner: Pruner
    tracker: SnapshotTracker
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader
    val_loader: DataLoader
    autocast: AbstractContextManager
    run_dir: Path
    input_shape: tuple[int, ...]
    num_classes: int
    dense_train_flops: float
    train_epochs: int
    finetune_epochs: int  # after training.epochs: the policy's fine-tuning (after_training), else 0
    latest_start: int | None  # the epoch by whose end pruning starts whatever the policy says (None: no limit)

    @property
    def total_epochs(self) -> int:
        return self.train_epochs + self.finetune_epochs


def build(
    config: Config,
    collective: Collective,
    reporter: Reporter,
    resumed: Checkpoint | None,
    latency_table: LatencyTable | None,
    run_dir: Path,
) -> Run:
    registry = get_registry()
    setup = build_run(config)
    budget = config.pruning.budget
    saved_table = resumed.extra.get("latency_table") if resumed else None
    note = getattr(reporter, "note", None) if collective.rank == 0 else None
    latency = run_latency_table(
        config, setup.model, setup.example, collective, run_dir, saved_table, latency_table, note
    )
    pruner = Pruner(
        setup.model,
        setup.example,
        criterion=registry.create("criterion", config.pruning.criterion.name, **config.pruning.criterion.params),
        surgery=registry.create("surgery", config.pruning.backend),
        budget=Budget(budget.fraction, budget.measure, budget.round_to),
        steps=config.pruning.steps,
        interval=config.pruning.interval,
        exclude=config.pruning.exclude,
        collective=collective,
        latency=latency,
        attention=config.pruning.attention,
    )
    similarity = config.start.similarity_metric
    data, seed, workers = setup.data, config.training.seed, config.data.num_workers
    pinned = setup.device.type == "cuda"  # page-locked batches copy to the GPU asynchronously
    train_epochs = config.training.epochs
    train_loader = collective.loader(data.train, config.data.batch_size, True, seed, workers, pinned)
    snapshots = config.start.cadence.count(train_epochs, len(train_loader)) or 0
    plan = plan_pruning(config, len(train_loader))
    if plan.problems:
        raise ConfigError("config", plan.problems)
    if collective.rank == 0:
        for note in plan.notes:
            warnings.warn(note, PlanWarning, stacklevel=2)
    return Run(
        config=config,
        collective=collective,
        reporter=reporter,
        hooks=get_plugin_manager().hook,
        model=setup.model,
        net=setup.model,  # wrapped by the collective once the weights are final (after a resume's restore)
        device=setup.device,
        layout=setup.layout,
        pruner=pruner,
        tracker=SnapshotTracker(
            registry.create("similarity", similarity), config.start.snapshot_window(snapshots), snapshots
        ),
        optimizer=make_optimizer(config, setup.model),
        train_loader=train_loader,
        val_loader=collective.loader(data.val, config.data.eval_batch_size, False, 0, workers, pinned),
        autocast=run_autocast(config.training.precision, setup.device),
        run_dir=run_dir,
        input_shape=(1, *data.input_shape),
        num_classes=data.num_classes,
        dense_train_flops=BACKWARD_FACTOR * pruner.dense_cost.flops * len(cast(Sized, data.train)) * train_epochs,
        train_epochs=train_epochs,
        finetune_epochs=config.start.extra_epochs(train_epochs),
        latest_start=plan.latest_start,
    )


def restore(run: Run, resumed: Checkpoint) -> Progress:
    """Shrink the fresh model to the checkpoint's architecture and load weights, optimizer
    state, tracker and pruning position; returns where the run stopped."""
    state = RunState.from_checkpoint(resumed)
    restore_run_state(resumed, state, run.model, run.pruner, run.tracker)
    load_state(resumed, run.model.load_state_dict, resumed.state_dict, "weights")
    run.model.to(memory_format=run.layout)  # the restored, pruned tensors
    run.optimizer = make_optimizer(run.config, run.model)
    load_state(resumed, run.optimizer.load_state_dict, state.optimizer, "optimizer state")
    last = state.history[-1]
    position = state.trigger_position
    if position is None and state.trigger_epoch is not None:  # a checkpoint from before snapshots within epochs
        position = float(state.trigger_epoch)
    return Progress(
        state.epoch,
        state.iteration,
        state.trigger_epoch,
        position,
        cast(StartedBy | None, state.started_by),
        last.train_flops,
        state.history,
    )


def load_state(ckpt: Checkpoint, load, state, what: str) -> None:
    try:
        load(state)
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(ckpt.source, f"its {what} do not fit this run's model ({err})") from None
