"""Progress inside an epoch, for epochs long enough to need it.

On a terminal: a tqdm bar (images done, images/s, ETA) that appears only once an epoch has
run for ``BAR_DELAY`` seconds and is cleared when the epoch's own line is printed. Anywhere
else (a log file, a Ray worker's forwarded stdout): one plain line every ``LINE_EVERY``
seconds. A short epoch shows neither.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol, cast

BAR_DELAY = 2.0
LINE_EVERY = 30.0


class EpochProgress(Protocol):
    def update(self, images: int) -> None: ...

    def close(self) -> None: ...


class NoProgress:
    def update(self, images: int) -> None:
        return None

    def close(self) -> None:
        return None


class ProgressBar:
    """tqdm, on the terminal's stderr; it draws only after ``BAR_DELAY`` seconds."""

    def __init__(self, epoch: int, images: int) -> None:
        from tqdm import tqdm

        self.bar: Any = tqdm(
            total=images, desc=f"epoch {epoch:>3}", unit="img", unit_scale=True, delay=BAR_DELAY, leave=False
        )

    def update(self, images: int) -> None:
        self.bar.update(images)

    def close(self) -> None:
        self.bar.close()


class ProgressLines:
    """A plain line every ``every`` seconds: iterations are cheap to count, lines are not."""

    def __init__(
        self,
        epoch: int,
        images: int,
        echo: Callable[[str], None],
        every: float = LINE_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.epoch, self.total, self.echo, self.every, self.clock = epoch, images, echo, every, clock
        self.done = 0
        self.started = self.last = clock()

    def update(self, images: int) -> None:
        self.done += images
        now = self.clock()
        if now - self.last < self.every or not self.done:
            return
        self.last = now
        rate = self.done / max(now - self.started, 1e-9)
        left = timedelta(seconds=round((self.total - self.done) / rate)) if rate else "?"
        self.echo(f"  epoch {self.epoch}: {self.done}/{self.total} images, {rate:.0f} img/s, ETA {left}")

    def close(self) -> None:
        return None


def lines_or_bar(epoch: int, images: int, echo: Callable[[str], None]) -> EpochProgress:
    """A bar on a terminal, else periodic lines through ``echo``."""
    if sys.stderr.isatty():
        return ProgressBar(epoch, images)
    return ProgressLines(epoch, images, echo)


def progress_of(reporter: object, epoch: int, images: int) -> EpochProgress:
    """The reporter's progress display for an epoch of ``images`` (on this rank), if it has one."""
    begin = getattr(reporter, "epoch_progress", None)
    return cast(EpochProgress, begin(epoch, images)) if begin is not None else NoProgress()
