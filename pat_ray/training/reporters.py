"""Where a run's per-epoch metrics and progress lines go: a ``Reporter``, and the console and
silent ones (the Ray layer adds one that reports to Ray Train, the tracking layer one that logs
to MLflow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from pat_ray.training.epoch_progress import EpochProgress, lines_or_bar, progress_of


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
