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
from pat_ray.errors import TrainingDivergedError
from pat_ray.training.checkpoint import read_checkpoint
from pat_ray.training.collective import Collective, LocalCollective
from pat_ray.training.epoch_progress import progress_of
from pat_ray.training.records import EpochRecord, Phase, RunResult, SnapshotPoint
from pat_ray.training.reporters import PrintReporter, Reporter
from pat_ray.training.run import BACKWARD_FACTOR, Progress, Run, build, restore
from pat_ray.training.run_state import LAST, RunState, save_run_state
from pat_ray.training.schedule import lr_multiplier
from pat_ray.training.setup import Given, to_device

DIVERGENCE_CHECK_EVERY = 50  # iterations between the host's looks at the finite-loss flag

__all__ = ["train", "RunResult", "TrainingDivergedError", "BACKWARD_FACTOR"]


def train(
    config: Config,
    collective: Collective | None = None,
    reporter: Reporter | None = None,
    resume: Path | None = None,
    latency_table: LatencyTable | None = None,
    run_dir: Path | None = None,
    given: Given | None = None,
) -> RunResult:
    """Run one PaT pipeline; ``resume`` continues from a ``last.pt`` this function wrote.

    ``latency_table``: for a budget in step time, a table the caller measured (the oracle
    times the layers once for all its trials); by default the run measures its own.
    ``run_dir``: where the checkpoints and run files go (``pat_ray.run`` gives each run a
    version folder; this engine alone writes to ``output_dir/name``). ``given``: a model
    factory or data handed over in Python instead of the config's names."""
    started = time.perf_counter()
    resumed = read_checkpoint(resume) if resume is not None else None
    run_dir = run_dir or Path(config.output_dir) / config.name
    reporter = reporter or PrintReporter()
    run = build(config, collective or LocalCollective(), reporter, resumed, latency_table, run_dir, given or Given())
    progress = restore(run, resumed) if resumed is not None else Progress()
    run.net = run.pat.begin(run.collective.wrap(run.model))  # a start at 0 prunes here, before any training
    setup_seconds = time.perf_counter() - started  # tracing, layer timing, a prune at init
    first_epoch = run.pat.epoch + 1
    for epoch in range(first_epoch, run.total_epochs + 1):
        epoch_start = time.perf_counter()
        phase = _phase(run, epoch)
        before = len(run.pat.snapshots)
        train_loss, train_acc = train_one_epoch(run, progress, epoch)
        val_loss, val_acc = evaluate(run.net, run.val_loader, run.device, run.layout, run.autocast, run.collective)
        run.net = run.pat.end_epoch(run.net)  # the epoch's last snapshot and the start policy's decision
        taken = run.pat.snapshots[before:]
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
                flops=run.pat.pruner.cost.flops,
                params=run.pat.pruner.cost.params,
                flops_kept=run.pat.flops_kept,
                time_kept=run.pat.pruner.time_kept,
                lr=run.optimizer.param_groups[0]["lr"],
                epoch_seconds=time.perf_counter() - epoch_start,
                setup_seconds=setup_seconds if epoch == first_epoch else 0.0,
                snapshot_seconds=sum(t.seconds for t in taken),
                train_flops=progress.train_flops,
                triggered=run.pat.trigger_epoch == epoch,
                fingerprint=run.pat.architecture.fingerprint(),
                snapshots=[SnapshotPoint(t.position, t.epi) for t in taken],
                trigger_position=run.pat.trigger_position if run.pat.trigger_epoch == epoch else None,
                budget_kept=run.pat.budget_kept,
            )
        )
        save_and_report(run, progress)
    checkpoint = run.run_dir / LAST if run.collective.rank == 0 else None
    state = _state(run, progress)
    return state.result(config, run.pat.architecture.to_dict(), checkpoint, time.perf_counter() - started)


def _phase(run: Run, epoch: int) -> Phase:
    if epoch > run.train_epochs:
        return "finetune"
    return "pruning" if run.pat.pruning else "pruned" if run.pat.pruned else "dense"


def train_one_epoch(run: Run, progress: Progress, epoch: int) -> tuple[float, float]:
    """One pass over the training data, the PaT component told of every optimizer step (its
    pruning steps and snapshots fall there); returns the mean loss and accuracy over every
    worker's samples.

    Loss, accuracy and the finite-loss check accumulate on the device: the host waits for
    the GPU only every ``DIVERGENCE_CHECK_EVERY`` iterations, before the component acts, and
    once at the end of the epoch."""
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
        for group in run.optimizer.param_groups:
            group["lr"] = _lr(run, run.pat.iteration, epoch)
        with run.autocast:
            logits = run.net(inputs)
            loss = F.cross_entropy(logits, targets, label_smoothing=run.config.training.label_smoothing)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        progress.train_flops += BACKWARD_FACTOR * run.pat.pruner.cost.flops * len(inputs) * run.collective.world_size
        loss_sum += loss.detach() * len(inputs)
        correct += (logits.argmax(1) == targets).sum()
        diverged |= ~torch.isfinite(loss.detach())
        seen += len(inputs)
        shown.update(len(inputs))
        if step % DIVERGENCE_CHECK_EVERY == 0 or run.pat.will_act():  # never score channels of a diverged model
            _check_finite(run, progress, epoch, diverged)
        run.net = run.pat.step(run.net)
    shown.close()
    _check_finite(run, progress, epoch, diverged)
    metrics = run.collective.mean_metrics({"loss": loss_sum.item() / seen, "acc": correct.item() / seen})
    return metrics["loss"], metrics["acc"]


def _check_finite(run: Run, progress: Progress, epoch: int, diverged: torch.Tensor) -> None:
    if bool(diverged):
        last = run.run_dir / LAST if progress.history else "none (first epoch)"
        raise TrainingDivergedError(
            f"the loss became NaN or infinite in epoch {epoch} (by iteration {run.pat.iteration}); "
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


def save_and_report(run: Run, progress: Progress) -> None:
    """Rank 0 writes ``last.pt`` (the one before kept as ``previous.pt``) when one is due;
    every rank reports (with the checkpoint, if one was written)."""
    record = progress.history[-1]
    saved = None
    if run.collective.rank == 0 and _checkpoint_due(run, record):
        saved = save_run_state(
            run.run_dir, run.model, run.config, run.recipe, run.pat.architecture, run.input_shape, _state(run, progress)
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
    pat = run.pat
    return RunState(
        epoch=pat.epoch,
        iteration=pat.iteration,
        trigger_epoch=pat.trigger_epoch,
        trigger_position=pat.trigger_position,
        started_by=pat.started_by,
        history=progress.history,
        optimizer=run.optimizer.state_dict(),
        tracker=pat.tracker.state() if pat.tracker else {"snapshots": [], "epi": [], "mask_distances": []},
        pruner=pat.pruner.state(),
        dense_flops=pat.pruner.dense_cost.flops,
        dense_train_flops=run.dense_train_flops,
        latency_table=pat.pruner.latency.to_dict() if pat.pruner.latency else None,
    )
