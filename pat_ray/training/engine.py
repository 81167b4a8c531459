"""The PaT training loop: dense epochs with EPI snapshots, pruning steps, training to the end.

Read ``train`` top to bottom: build everything from the config, then one loop over epochs,
each a training pass, an evaluation, the snapshot-and-decide step and a save. The engine
knows nothing of Ray: agreement between workers goes through ``collective`` and metrics
leave through ``reporter``.
"""

from __future__ import annotations

import time
from collections.abc import Sized
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from pat_ray.config import Config
from pat_ray.core.cost.latency import LatencyTable
from pat_ray.training.checkpoint import read_checkpoint
from pat_ray.training.collective import Collective, LocalCollective, PrintReporter, Reporter
from pat_ray.training.epoch_progress import progress_of
from pat_ray.training.records import EpochRecord, Phase, RunResult, SnapshotPoint
from pat_ray.training.run import BACKWARD_FACTOR, Progress, Run, Taken, build, restore
from pat_ray.training.run_state import LAST, RunState, save_run_state
from pat_ray.training.schedule import lr_multiplier
from pat_ray.training.setup import to_device

DIVERGENCE_CHECK_EVERY = 50  # iterations between the host's looks at the finite-loss flag

__all__ = ["train", "RunResult", "TrainingDivergedError", "BACKWARD_FACTOR"]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def train(
    config: Config,
    collective: Collective | None = None,
    reporter: Reporter | None = None,
    resume: Path | None = None,
    latency_table: LatencyTable | None = None,
    run_dir: Path | None = None,
) -> RunResult:
    """Run one PaT pipeline; ``resume`` continues from a ``last.pt`` this function wrote.

    ``latency_table``: for a budget in step time, a table the caller measured (the oracle
    times the layers once for all its trials); by default the run measures its own.
    ``run_dir``: where the checkpoints and run files go (``pat_ray.run`` gives each run a
    version folder; this engine alone writes to ``output_dir/name``)."""
    started = time.perf_counter()
    resumed = read_checkpoint(resume) if resume is not None else None
    run_dir = run_dir or Path(config.output_dir) / config.name
    run = build(config, collective or LocalCollective(), reporter or PrintReporter(), resumed, latency_table, run_dir)
    progress = restore(run, resumed) if resumed is not None else Progress()
    run.net = run.collective.wrap(run.model)
    if resumed is None:  # a fixed start at 0 (or a latest start of 0): prune at initialization
        _decide(run, progress, 0, 0.0, None)
    setup_seconds = time.perf_counter() - started  # tracing, layer timing, a prune at init
    first_epoch = progress.epoch + 1
    for epoch in range(first_epoch, run.total_epochs + 1):
        epoch_start = time.perf_counter()
        phase = _phase(run, epoch)
        progress.snapshots = []
        train_loss, train_acc = train_one_epoch(run, progress, epoch)
        val_loss, val_acc = evaluate(run.net, run.val_loader, run.device, run.layout, run.autocast, run.collective)
        if _snapshot_due(run, progress, epoch, len(run.train_loader)):
            snapshot_and_decide(run, progress, epoch, float(epoch))
        elif progress.trigger_epoch is None and _phase(run, epoch) != "finetune":
            _decide(run, progress, epoch, float(epoch), None)  # a fixed start falls on an epoch's end
        taken = progress.snapshots
        progress.epoch = epoch
        progress.history.append(
            EpochRecord(
                epoch=epoch,
                phase=phase,
                train_loss=train_loss,
                train_acc=train_acc,
                val_loss=val_loss,
                val_acc=val_acc,
                epi=taken[-1].epi if taken else None,
                snapshot_counts=taken[-1].counts if taken else None,
                flops=run.pruner.cost.flops,
                params=run.pruner.cost.params,
                flops_kept=run.pruner.flops_kept,
                time_kept=run.pruner.time_kept,
                lr=run.optimizer.param_groups[0]["lr"],
                epoch_seconds=time.perf_counter() - epoch_start,
                setup_seconds=setup_seconds if epoch == first_epoch else 0.0,
                snapshot_seconds=sum(t.seconds for t in taken),
                train_flops=progress.train_flops,
                triggered=progress.trigger_epoch == epoch,
                fingerprint=run.pruner.architecture.fingerprint(),
                snapshots=[SnapshotPoint(t.position, t.epi) for t in taken],
                trigger_position=progress.trigger_position if progress.trigger_epoch == epoch else None,
                budget_kept=run.pruner.budget_kept,
            )
        )
        save_and_report(run, progress)
    state = _state(run, progress)
    checkpoint = run.run_dir / LAST if run.collective.rank == 0 else None
    return RunResult.from_state(
        config, state, run.pruner.architecture.to_dict(), checkpoint, time.perf_counter() - started
    )


def _phase(run: Run, epoch: int) -> Phase:
    if epoch > run.train_epochs:
        return "finetune"
    return "pruning" if run.pruner.active else "pruned" if run.pruner.finished else "dense"


def train_one_epoch(run: Run, progress: Progress, epoch: int) -> tuple[float, float]:
    """One pass over the training data, with the pruning steps that fall due in it; returns
    the mean loss and accuracy over every worker's samples.

    Loss, accuracy and the finite-loss check accumulate on the device: the host waits for
    the GPU only every ``DIVERGENCE_CHECK_EVERY`` iterations, before a pruning step, and once
    at the end of the epoch."""
    sampler = run.train_loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)  # each epoch's order depends on (seed, epoch) only
    run.net.train()
    loss_sum = torch.zeros((), device=run.device)
    correct = torch.zeros((), dtype=torch.long, device=run.device)
    diverged = torch.zeros((), dtype=torch.bool, device=run.device)
    seen = 0
    shown = progress_of(run.reporter, epoch, len(cast(Sized, sampler)))
    for step, (inputs, targets) in enumerate(run.train_loader, start=1):
        inputs, targets = to_device(inputs, run.device, run.layout), targets.to(run.device, non_blocking=True)
        if run.pruner.due():
            _check_finite(run, progress, epoch, diverged)  # never score channels of a diverged model
            _prune_step(run, epoch)
        for group in run.optimizer.param_groups:
            group["lr"] = _lr(run, progress.iteration, epoch)
        with run.autocast:
            logits = run.net(inputs)
            loss = F.cross_entropy(logits, targets, label_smoothing=run.config.training.label_smoothing)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.pruner.observe(run.model)
        run.optimizer.step()
        progress.iteration += 1
        progress.train_flops += BACKWARD_FACTOR * run.pruner.cost.flops * len(inputs) * run.collective.world_size
        loss_sum += loss.detach() * len(inputs)
        correct += (logits.argmax(1) == targets).sum()
        diverged |= ~torch.isfinite(loss.detach())
        seen += len(inputs)
        shown.update(len(inputs))
        if step % DIVERGENCE_CHECK_EVERY == 0:
            _check_finite(run, progress, epoch, diverged)
        if step < len(run.train_loader) and _snapshot_due(run, progress, epoch, step):  # the epoch's end: after eval
            _check_finite(run, progress, epoch, diverged)
            snapshot_and_decide(run, progress, epoch, epoch - 1 + step / len(run.train_loader))
    shown.close()
    _check_finite(run, progress, epoch, diverged)
    metrics = run.collective.mean_metrics({"loss": loss_sum.item() / seen, "acc": correct.item() / seen})
    return metrics["loss"], metrics["acc"]


def _check_finite(run: Run, progress: Progress, epoch: int, diverged: torch.Tensor) -> None:
    if bool(diverged):
        last = run.run_dir / LAST if progress.history else "none (first epoch)"
        raise TrainingDivergedError(
            f"the loss became NaN or infinite in epoch {epoch} (by iteration {progress.iteration}); "
            f"stopped. Last good checkpoint: {last}"
        )


def _lr(run: Run, iteration: int, epoch: int) -> float:
    """The schedule's learning rate; a fine-tune phase runs its own schedule at a smaller lr."""
    base, schedule = run.config.training.optimizer.lr, run.config.training.schedule
    iters = len(run.train_loader)
    if epoch > run.train_epochs:
        local = iteration - run.train_epochs * iters
        return run.config.start.extra_lr(base) * lr_multiplier(schedule, local, iters, run.finetune_epochs)
    return base * lr_multiplier(schedule, iteration, iters, run.train_epochs)


@torch.no_grad()
def evaluate(net: nn.Module, loader, device, layout, autocast, collective) -> tuple[float, float]:
    net.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for inputs, targets in loader:
        inputs, targets = to_device(inputs, device, layout), targets.to(device)
        with autocast:
            logits = net(inputs)
        loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum").item()
        correct += (logits.argmax(1) == targets).sum().item()
        seen += len(inputs)
    metrics = collective.mean_metrics({"loss": loss_sum / max(1, seen), "acc": correct / max(1, seen)})
    return metrics["loss"], metrics["acc"]


def _snapshot_due(run: Run, progress: Progress, epoch: int, step: int) -> bool:
    """Whether a snapshot is taken after ``step`` of ``epoch``: until pruning starts, at the
    start policy's cadence, never in a fine-tuning phase."""
    if progress.trigger_epoch is not None or _phase(run, epoch) == "finetune":
        return False
    return run.config.start.cadence.due(step, progress.iteration, len(run.train_loader))


def snapshot_and_decide(run: Run, progress: Progress, epoch: int, position: float) -> None:
    """Which sub-network would the budget keep now, its EPI, and whether the start policy
    fires (every rank takes rank 0's decision); when it fires, the pruning phase starts here,
    ``position`` epochs into training (mid-epoch or at an epoch's end)."""
    started = time.perf_counter()
    snapshot, scores = run.pruner.snapshot(run.model)
    epi = run.tracker.record(snapshot)
    progress.snapshots.append(Taken(position, epi, list(snapshot.counts), time.perf_counter() - started))
    _decide(run, progress, epoch, position, scores)


def _decide(run: Run, progress: Progress, epoch: int, position: float, scores) -> None:
    """The start policy decides; past its latest start pruning starts whatever it says, so the
    pruning steps end inside the schedule and the run reaches its budget."""
    fires = run.config.start.decide(position, run.train_epochs, run.tracker)
    late = not fires and run.latest_start is not None and position >= run.latest_start
    if run.collective.broadcast_decision(fires or late):
        progress.trigger_epoch, progress.trigger_position = epoch, position
        progress.started_by = "latest_start" if late else "policy"
        _start_pruning(run, epoch, scores)


def save_and_report(run: Run, progress: Progress) -> None:
    """Rank 0 writes ``last.pt`` (the one before kept as ``previous.pt``) when one is due;
    every rank reports (with the checkpoint, if one was written)."""
    record = progress.history[-1]
    saved = None
    if run.collective.rank == 0 and _checkpoint_due(run, record):
        saved = save_run_state(
            run.run_dir, run.model, run.config, run.input_shape, run.num_classes, run.pruner, _state(run, progress)
        )
    run.reporter.report(record.to_dict(), saved)
    run.hooks.pat_ray_on_epoch_end(epoch=record.epoch, metrics=record.to_dict())


def _checkpoint_due(run: Run, record: EpochRecord) -> bool:
    """Every ``training.checkpoint_every`` epochs, and always where the run changes course:
    the trigger, the epochs with pruning steps, the last epoch."""
    every = run.config.training.checkpoint_every
    return (
        record.epoch % every == 0 or record.triggered or record.phase == "pruning" or record.epoch == run.total_epochs
    )


def _state(run: Run, progress: Progress) -> RunState:
    return RunState(
        epoch=progress.epoch,
        iteration=progress.iteration,
        trigger_epoch=progress.trigger_epoch,
        trigger_position=progress.trigger_position,
        started_by=progress.started_by,
        history=progress.history,
        optimizer=run.optimizer.state_dict(),
        tracker=run.tracker.state(),
        pruner=run.pruner.state(),
        dense_flops=run.pruner.dense_cost.flops,
        dense_train_flops=run.dense_train_flops,
        latency_table=run.pruner.latency.to_dict() if run.pruner.latency else None,
    )


def _start_pruning(run: Run, epoch: int, scores=None) -> None:
    """Begin the pruning phase; the first step is immediate when scores are available."""
    run.pruner.start()
    if scores is not None or not run.pruner.criterion.needs_gradients:
        _prune_step(run, epoch, scores)


def _prune_step(run: Run, epoch: int, scores=None) -> None:
    model = run.collective.unwrap(run.net)
    step = run.pruner.step(model, run.optimizer, scores)
    model.to(memory_format=run.layout)  # native surgery keeps layouts; a plugin backend may not
    run.hooks.pat_ray_on_prune(
        epoch=epoch,
        step=step.step,
        architecture=step.architecture,
        metrics={"flops": step.cost.flops, "params": step.cost.params, "fraction": step.fraction},
    )
    run.net = run.collective.wrap(model)
