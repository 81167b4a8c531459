"""What a PaT run trains with: ``Run`` (built once from the config, and from a checkpoint when
resuming; its ``pat`` component knows where the run stands) and ``Progress`` (what the loop adds
up). Kept apart
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

from pat_ray.config import Config
from pat_ray.config.plan import PlanError
from pat_ray.core.cost.latency import LatencyTable
from pat_ray.errors import CheckpointError, ConfigError
from pat_ray.plugins.recipes import ModelRecipe
from pat_ray.plugins.registry import get_plugin_manager, get_registry
from pat_ray.training.checkpoint import Checkpoint
from pat_ray.training.collective import Collective
from pat_ray.training.latency_budget import run_latency_table
from pat_ray.training.pat import PaT
from pat_ray.training.pruner import PruneStep
from pat_ray.training.records import EpochRecord
from pat_ray.training.reporters import Reporter
from pat_ray.training.run_state import RunState
from pat_ray.training.setup import Given, RunSetup, build_run, make_optimizer
from pat_ray.training.setup import autocast as run_autocast

BACKWARD_FACTOR = 3  # training FLOPs per sample = forward + backward (~2x forward)


class PlanWarning(UserWarning):
    """The start policy cannot fire before its latest start in this schedule (pruning starts there)."""


@dataclass
class Progress:
    """What the loop adds up as the run goes (where it stands is the PaT component's)."""

    train_flops: float = 0.0
    history: list[EpochRecord] = field(default_factory=list)


@dataclass
class Run:
    """What the loop trains with, built once from the config (and a checkpoint, resuming)."""

    config: Config
    collective: Collective
    reporter: Reporter
    hooks: Any  # the plugin manager's hook relay
    model: nn.Module
    net: nn.Module  # the model as the collective wraps it (DDP on Ray workers)
    recipe: ModelRecipe  # how the model was made: every checkpoint records it
    device: torch.device
    layout: torch.memory_format
    pat: PaT  # snapshots, the start policy and the pruning steps
    optimizer: torch.optim.Optimizer
    train_loader: DataLoader
    val_loader: DataLoader
    autocast: AbstractContextManager
    run_dir: Path
    input_shape: tuple[int, ...]
    dense_train_flops: float
    train_epochs: int
    finetune_epochs: int  # after training.epochs: the policy's fine-tuning (after_training), else 0

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
    given: Given | None = None,
) -> Run:
    setup = build_run(config, given or Given())
    saved_table = resumed.extra.get("latency_table") if resumed else None
    note = getattr(reporter, "note", None) if collective.rank == 0 else None
    latency = run_latency_table(
        config, setup.model, setup.example, collective, run_dir, saved_table, latency_table, note
    )
    data, seed, workers = setup.data, config.training.seed, config.data.num_workers
    pinned = setup.device.type == "cuda"  # page-locked batches copy to the GPU asynchronously
    train_epochs = config.training.epochs
    train_loader = collective.loader(data.train, config.data.batch_size, True, seed, workers, pinned)
    optimizer = make_optimizer(config, setup.model)
    hooks = get_plugin_manager().hook
    pat = _component(config, setup, optimizer, collective, len(train_loader), latency, hooks)
    if collective.rank == 0:
        for line in pat.plan.notes if pat.plan else []:
            warnings.warn(line, PlanWarning, stacklevel=2)
    return Run(
        config=config,
        collective=collective,
        reporter=reporter,
        hooks=hooks,
        model=setup.model,
        net=setup.model,  # wrapped by the collective once the weights are final (after a resume's restore)
        recipe=setup.recipe,
        device=setup.device,
        layout=setup.layout,
        pat=pat,
        optimizer=optimizer,
        train_loader=train_loader,
        val_loader=collective.loader(data.val, config.data.eval_batch_size, False, 0, workers, pinned),
        autocast=run_autocast(config.training.precision, setup.device),
        run_dir=run_dir,
        input_shape=(1, *data.input_shape),
        dense_train_flops=BACKWARD_FACTOR * pat.pruner.dense_cost.flops * len(cast(Sized, data.train)) * train_epochs,
        train_epochs=train_epochs,
        finetune_epochs=config.start.extra_epochs(train_epochs),
    )


def _component(
    config: Config,
    setup: RunSetup,
    optimizer: torch.optim.Optimizer,
    collective: Collective,
    iterations_per_epoch: int,
    latency: LatencyTable | None,
    hooks: Any,
) -> PaT:
    """The PaT component with the config's pruning and start sections; a schedule too short for
    the pruning steps is a ConfigError naming the fields to change."""
    pruning, budget = config.pruning, config.pruning.budget

    def on_prune(step: PruneStep) -> None:
        metrics = {"flops": step.cost.flops, "params": step.cost.params, "fraction": step.fraction}
        hooks.pat_ray_on_prune(epoch=step.epoch, step=step.step, architecture=step.architecture, metrics=metrics)

    try:
        return PaT(
            setup.model,
            setup.example,
            optimizer,
            epochs=config.training.epochs,
            budget=budget.fraction,
            measure=budget.measure,
            round_to=budget.round_to,
            start=config.start,
            criterion=get_registry().create("criterion", pruning.criterion.name, **pruning.criterion.params),
            steps=pruning.steps,
            interval=pruning.interval,
            exclude=pruning.exclude,
            attention=pruning.attention,
            backend=pruning.backend,
            iterations_per_epoch=iterations_per_epoch,
            latency=latency,
            on_prune=on_prune,
            collective=collective,
        )
    except PlanError as err:
        raise ConfigError("config", err.problems) from None


def restore(run: Run, resumed: Checkpoint) -> Progress:
    """Shrink the fresh model to the checkpoint's architecture and load weights, optimizer
    state and the component's position; returns what the loop had added up."""
    state = RunState.from_checkpoint(resumed)
    try:
        run.pat.load_state_dict(component_state(resumed, state, len(run.train_loader)))
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(resumed.source, f"does not fit this run's model ({err})") from None
    load_state(resumed, run.model.load_state_dict, resumed.state_dict, "weights")
    run.model.to(memory_format=run.layout)  # the restored, pruned tensors
    run.optimizer = make_optimizer(run.config, run.model)
    run.pat.optimizer = run.optimizer
    load_state(resumed, run.optimizer.load_state_dict, state.optimizer, "optimizer state")
    return Progress(state.history[-1].train_flops, state.history)


def component_state(ckpt: Checkpoint, state: RunState, iterations_per_epoch: int) -> dict[str, Any]:
    """What ``PaT.load_state_dict`` takes, from a run checkpoint (older ones included)."""
    position = state.trigger_position
    if position is None and state.trigger_epoch is not None:  # a checkpoint from before snapshots within epochs
        position = float(state.trigger_epoch)
    snapshots = [
        {"position": point.position, "epi": point.epi, "counts": record.snapshot_counts or [], "seconds": 0.0}
        for record in state.history
        for point in record.snapshots
    ]
    return {
        "architecture": ckpt.architecture.to_dict(),
        "pruner": state.pruner,
        "tracker": state.tracker,
        "snapshots": snapshots,
        "epoch": state.epoch,
        "iteration": state.iteration,
        "step_in_epoch": 0,
        "iterations_per_epoch": iterations_per_epoch,
        "trigger_epoch": state.trigger_epoch,
        "trigger_position": position,
        "started_by": state.started_by,
    }


def load_state(ckpt: Checkpoint, load, state, what: str) -> None:
    try:
        load(state)
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(ckpt.source, f"its {what} do not fit this run's model ({err})") from None
