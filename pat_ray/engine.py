"""The PaT training loop: dense epochs with EPI snapshots, pruning steps, training to the end.

Read ``train`` top to bottom: build everything from the config, then one loop over epochs.
The engine knows nothing of Ray: agreement between workers goes through ``collective`` and
metrics leave through ``reporter``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pat_ray.checkpoint import CheckpointError, read_checkpoint
from pat_ray.comm import Collective, LocalCollective, PrintReporter, Reporter
from pat_ray.config import AfterTrainingStart, Config, EPIStart
from pat_ray.core.latency import LatencyTable
from pat_ray.core.selection import Budget
from pat_ray.latency_budget import run_latency_table
from pat_ray.policies import SnapshotTracker, decide, tracker_window
from pat_ray.pruner import Pruner
from pat_ray.registry import get_plugin_manager, get_registry
from pat_ray.run_setup import autocast as run_autocast
from pat_ray.run_setup import build_run
from pat_ray.run_state import load_run_state, save_run_state
from pat_ray.schedule import lr_multiplier

BACKWARD_FACTOR = 3  # training FLOPs per sample = forward + backward (~2x forward)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class RunResult:
    """Everything a run measured; ``history`` holds one dict per epoch. ``wall_seconds`` is
    the whole run, setup included (tracing, and timing layers for a latency budget)."""

    config: Config
    history: list[dict[str, Any]]
    trigger_epoch: int | None
    final_accuracy: float
    dense_flops: int
    final_flops: int
    train_flops: float
    dense_train_flops: float
    wall_seconds: float
    architecture: dict = field(repr=False)
    checkpoint: Path | None = None
    mlflow_run_id: str | None = None

    @property
    def flops_kept(self) -> float:
        return self.final_flops / self.dense_flops

    @property
    def train_flops_ratio(self) -> float:
        """Training FLOPs spent relative to training the dense model for the same epochs."""
        return self.train_flops / self.dense_train_flops


def train(
    config: Config,
    collective: Collective | None = None,
    reporter: Reporter | None = None,
    resume: Path | None = None,
    latency_table: LatencyTable | None = None,
) -> RunResult:
    """Run one PaT pipeline; ``resume`` continues from a ``last.pt`` this function wrote.

    ``latency_table``: for a budget in step time, a table the caller measured (the oracle
    times the layers once for all its trials); by default the run measures its own."""
    started = time.perf_counter()
    collective = collective or LocalCollective()
    reporter = reporter or PrintReporter()
    resumed = read_checkpoint(resume) if resume is not None else None
    registry, hooks = get_registry(), get_plugin_manager().hook
    run_dir = Path(config.output_dir) / config.name
    checkpoint_path = run_dir / "last.pt"

    # data, model, pruning machinery
    setup = build_run(config)
    data, model, device, layout, example = setup.data, setup.model, setup.device, setup.layout, setup.example
    budget = Budget(
        config.pruning.budget.fraction,
        config.pruning.budget.measure,
        config.pruning.budget.round_to,
    )
    latency = run_latency_table(
        config,
        model,
        example,
        collective,
        run_dir,
        saved=resumed.extra.get("latency_table") if resumed else None,
        given=latency_table,
        note=getattr(reporter, "note", None) if collective.rank == 0 else None,
    )
    pruner = Pruner(
        model,
        example,
        criterion=registry.create("criterion", config.pruning.criterion.name, **config.pruning.criterion.params),
        surgery=registry.create("surgery", config.pruning.backend),
        budget=budget,
        steps=config.pruning.steps,
        interval=config.pruning.interval,
        exclude=config.pruning.exclude,
        collective=collective,
        latency=latency,
    )
    similarity = (
        registry.create("similarity", config.start.similarity)
        if isinstance(config.start, EPIStart)
        else registry.create("similarity", "structural")
    )
    tracker = SnapshotTracker(similarity, tracker_window(config.start))
    train_loader = collective.loader(
        data.train, config.data.batch_size, True, config.training.seed, config.data.num_workers
    )
    val_loader = collective.loader(data.val, config.data.eval_batch_size, False, 0, config.data.num_workers)
    iters_per_epoch = len(train_loader)
    samples_per_epoch = len(data.train)
    dense_train_flops = BACKWARD_FACTOR * pruner.dense_cost.flops * samples_per_epoch * config.training.epochs

    # optimization
    train_epochs = config.training.epochs
    finetune = config.start if isinstance(config.start, AfterTrainingStart) else None
    finetune_epochs = (finetune.finetune_epochs or train_epochs) if finetune else 0
    total_epochs = train_epochs + finetune_epochs
    history: list[dict[str, Any]] = []
    trigger_epoch: int | None = None
    train_flops = 0.0
    iteration = 0
    first_epoch = 1
    if resumed is not None:
        state = load_run_state(resumed, model, pruner, tracker)
        _load_state(resumed, model.load_state_dict, state.model_state, "weights")
        model.to(memory_format=layout)  # the restored, pruned tensors
        history, trigger_epoch, iteration = state.history, state.trigger_epoch, state.iteration
        train_flops, first_epoch = history[-1]["train_flops"], state.epoch + 1
    optimizer = _optimizer(config, model)
    if resumed is not None:
        _load_state(resumed, optimizer.load_state_dict, state.optimizer, "optimizer state")
    base_lr = config.training.optimizer.lr
    autocast = run_autocast(config.training.precision, device)

    net = collective.wrap(model)

    if resumed is None and decide(config.start, 0, train_epochs, tracker):  # fixed 0: prune at init
        trigger_epoch = 0
        net = _start_pruning(pruner, collective, net, optimizer, hooks, epoch=0, layout=layout)

    setup_seconds = time.perf_counter() - started  # tracing, layer timing, a prune at init
    for epoch in range(first_epoch, total_epochs + 1):
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)  # distributed shuffling differs per epoch
        epoch_start = time.perf_counter()
        in_finetune = finetune is not None and epoch > train_epochs
        phase = "finetune" if in_finetune else "pruning" if pruner.active else "pruned" if pruner.finished else "dense"
        net.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for inputs, targets in train_loader:
            inputs, targets = _to(inputs, device, layout), targets.to(device)
            if pruner.due():
                net = _prune_step(pruner, collective, net, optimizer, hooks, epoch, layout=layout)
            lr_iter = iteration - train_epochs * iters_per_epoch if in_finetune else iteration
            lr_epochs = finetune_epochs if in_finetune else train_epochs
            scale = finetune.finetune_lr_scale if in_finetune else 1.0
            for group in optimizer.param_groups:
                group["lr"] = (
                    base_lr * scale * lr_multiplier(config.training.schedule, lr_iter, iters_per_epoch, lr_epochs)
                )
            with autocast:
                logits = net(inputs)
                loss = F.cross_entropy(logits, targets, label_smoothing=config.training.label_smoothing)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"loss became {loss.item()} at epoch {epoch}, iteration {iteration}; "
                    f"stopped. Last good checkpoint: {checkpoint_path if history else 'none (first epoch)'}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            pruner.observe(model)
            optimizer.step()
            iteration += 1
            train_flops += BACKWARD_FACTOR * pruner.cost.flops * len(inputs) * collective.world_size
            loss_sum += loss.item() * len(inputs)
            correct += (logits.argmax(1) == targets).sum().item()
            seen += len(inputs)
        train_metrics = collective.mean_metrics({"loss": loss_sum / seen, "acc": correct / seen})
        val_loss, val_acc = _evaluate(net, val_loader, device, layout, autocast, collective)

        # the snapshot: which sub-network would the budget keep now?
        epi, counts, snapshot_seconds, scores = None, None, 0.0, None
        if trigger_epoch is None and not in_finetune:
            snap_start = time.perf_counter()
            snapshot, scores = pruner.snapshot(model)
            epi = tracker.record(snapshot)
            counts = list(snapshot.counts)
            snapshot_seconds = time.perf_counter() - snap_start
            if collective.broadcast_decision(decide(config.start, epoch, train_epochs, tracker)):
                trigger_epoch = epoch
        record = {
            "epoch": epoch,
            "phase": phase,
            "train_loss": train_metrics["loss"],
            "train_acc": train_metrics["acc"],
            "val_loss": val_loss,
            "val_acc": val_acc,
            "epi": epi,
            "snapshot_counts": counts,
            "flops": pruner.cost.flops,
            "params": pruner.cost.params,
            "flops_kept": pruner.flops_kept,
            "time_kept": pruner.time_kept,
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": time.perf_counter() - epoch_start,
            # this process's setup, on the first epoch it runs (so a resumed run has two)
            "setup_seconds": setup_seconds if epoch == first_epoch else 0.0,
            "snapshot_seconds": snapshot_seconds,
            "train_flops": train_flops,
            "triggered": trigger_epoch == epoch,
            "fingerprint": pruner.architecture.fingerprint(),
        }
        if trigger_epoch == epoch:
            net = _start_pruning(pruner, collective, net, optimizer, hooks, epoch, scores, layout=layout)
            record.update(
                flops=pruner.cost.flops,
                params=pruner.cost.params,
                flops_kept=pruner.flops_kept,
                time_kept=pruner.time_kept,
            )
        history.append(record)
        saved = None
        if collective.rank == 0:
            saved = save_run_state(
                run_dir,
                model,
                config,
                data,
                pruner,
                optimizer,
                history,
                tracker,
                iteration,
                trigger_epoch,
                dense_train_flops,
            )
        reporter.report(record, saved)
        hooks.pat_ray_on_epoch_end(epoch=epoch, metrics=record)

    return RunResult(
        config=config,
        history=history,
        trigger_epoch=trigger_epoch,
        final_accuracy=history[-1]["val_acc"],
        dense_flops=pruner.dense_cost.flops,
        final_flops=pruner.cost.flops,
        train_flops=train_flops,
        dense_train_flops=dense_train_flops,
        wall_seconds=time.perf_counter() - started,
        architecture=pruner.architecture.to_dict(),
        checkpoint=checkpoint_path if collective.rank == 0 else None,
    )


def _load_state(ckpt, load, state, what: str) -> None:
    try:
        load(state)
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(ckpt.source, f"its {what} do not fit this run's model ({err})") from None


def _start_pruning(
    pruner: Pruner, collective, net, optimizer, hooks, epoch: int, scores=None, layout=None
) -> nn.Module:
    """Begin the pruning phase; the first step is immediate when scores are available."""
    pruner.start()
    if scores is not None or not pruner.criterion.needs_gradients:
        net = _prune_step(pruner, collective, net, optimizer, hooks, epoch, scores, layout)
    return net


def _prune_step(pruner: Pruner, collective, net, optimizer, hooks, epoch: int, scores=None, layout=None) -> nn.Module:
    model = collective.unwrap(net)
    step = pruner.step(model, optimizer, scores)
    if layout is not None:
        model.to(memory_format=layout)  # native surgery keeps layouts; a plugin backend may not
    hooks.pat_ray_on_prune(
        epoch=epoch,
        step=step.step,
        architecture=step.architecture,
        metrics={"flops": step.cost.flops, "params": step.cost.params, "fraction": step.fraction},
    )
    return collective.wrap(model)


@torch.no_grad()
def _evaluate(net: nn.Module, loader, device, layout, autocast, collective) -> tuple[float, float]:
    net.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for inputs, targets in loader:
        inputs, targets = _to(inputs, device, layout), targets.to(device)
        with autocast:
            logits = net(inputs)
        loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum").item()
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(inputs)
    metrics = collective.mean_metrics({"loss": loss_sum / max(1, seen), "acc": correct / max(1, seen)})
    return metrics["loss"], metrics["acc"]


def _to(images: torch.Tensor, device: torch.device, layout: torch.memory_format) -> torch.Tensor:
    """Images to the device, NHWC when asked (only 4-D batches have a channels-last layout)."""
    return images.to(device, memory_format=layout) if images.dim() == 4 else images.to(device)


def _optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    opt = config.training.optimizer
    if opt.name == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=opt.lr,
            momentum=opt.momentum,
            weight_decay=opt.weight_decay,
            nesterov=opt.nesterov,
        )
    return torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
