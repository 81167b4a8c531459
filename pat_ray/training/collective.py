"""How the engine talks to the world: a Collective (agreement between workers) and a
Reporter (where per-epoch metrics go). The single-process versions live here; the Ray
layer supplies torch.distributed and ray.train ones with the same methods."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pat_ray.training.epoch_progress import EpochProgress, lines_or_bar, progress_of


class Collective(Protocol):
    rank: int
    world_size: int

    def loader(
        self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int, pin_memory: bool = False
    ) -> DataLoader: ...
    def wrap(self, model: nn.Module) -> nn.Module: ...
    def unwrap(self, model: nn.Module) -> nn.Module: ...
    def mean_scores(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...
    def check_agreement(self, fingerprint: str) -> None: ...
    def share(self, value: Any) -> Any: ...
    def broadcast_decision(self, decision: bool) -> bool: ...
    def mean_metrics(self, values: dict[str, float]) -> dict[str, float]: ...


def seeded_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int,
    pin_memory: bool,
    rank: int,
    world_size: int,
) -> DataLoader:
    """This rank's share of ``dataset``. The order of epoch e depends only on (seed, e) (the
    engine calls ``sampler.set_epoch``): a resumed run sees the batches an uninterrupted one
    would, and one process sees what one Ray worker sees."""
    sampler: DistributedSampler[Any] = DistributedSampler(dataset, world_size, rank, shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, pin_memory=pin_memory)


class LocalCollective:
    """One process: nothing to agree on."""

    rank, world_size = 0, 1

    def loader(self, dataset, batch_size, shuffle, seed, num_workers, pin_memory=False):
        return seeded_loader(dataset, batch_size, shuffle, seed, num_workers, pin_memory, rank=0, world_size=1)

    def wrap(self, model):
        return model

    def unwrap(self, model):
        return model

    def mean_scores(self, scores):
        return scores

    def check_agreement(self, fingerprint):
        return None

    def share(self, value):
        return value

    def broadcast_decision(self, decision):
        return decision

    def mean_metrics(self, values):
        return values


class Reporter(Protocol):
    """Where a run's progress goes. A reporter may also define ``note(text)``: the engine then
    hands it one-off progress lines (e.g. while it measures layer latencies); and
    ``epoch_progress(epoch, images)``, returning an ``EpochProgress`` the engine updates with
    every batch."""

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        """Called once per epoch on every rank; ``checkpoint`` is rank 0's saved ``last.pt``."""


class WrappingReporter:
    """A reporter around another: its notes and progress display are the inner reporter's;
    subclasses add what they do with each epoch's report."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner

    def note(self, text: str) -> None:
        note = getattr(self.inner, "note", None)
        if note is not None:
            note(text)

    def epoch_progress(self, epoch: int, images: int) -> EpochProgress:
        return progress_of(self.inner, epoch, images)

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        self.inner.report(metrics, checkpoint)


class PrintReporter:
    """One human-readable line per epoch."""

    def __init__(self, echo=print) -> None:
        self.echo = echo

    def report(self, metrics: dict[str, Any], checkpoint: Path | None = None) -> None:
        epi, time_kept = metrics.get("epi"), metrics.get("time_kept")
        self.echo(
            f"epoch {metrics['epoch']:>3}  loss {metrics['train_loss']:.4f}  "
            f"acc {metrics['val_acc']:.4f}  EPI {'   -  ' if epi is None else f'{epi:.4f}'}  "
            f"{metrics['phase']:<8} FLOPs kept {metrics['flops_kept']:.3f}  "
            + ("" if time_kept is None else f"time kept {time_kept:.3f}  ")
            + f"{metrics['epoch_seconds']:.1f}s"
        )

    def note(self, text: str) -> None:
        self.echo(text)

    def epoch_progress(self, epoch: int, images: int) -> EpochProgress:
        return lines_or_bar(epoch, images, self.echo)


class SilentReporter:
    def report(self, metrics: dict[str, Any], checkpoint: Path | None = None) -> None:
        return None
