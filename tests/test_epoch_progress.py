"""Progress inside an epoch: periodic lines off a terminal, nothing for a short epoch."""

from __future__ import annotations

import io
import sys

import pytest

from pat_ray.training.epoch_progress import LINE_EVERY, NoProgress, ProgressLines, progress_of
from pat_ray.training.reporters import PrintReporter, SilentReporter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_come_every_interval_with_rate_and_eta():
    clock, lines = Clock(), []
    shown = ProgressLines(3, 1000, lines.append, every=10.0, clock=clock)
    for _ in range(4):  # 4 batches of 100 images in 8 s: under the interval, no line
        clock.now += 2.0
        shown.update(100)
    assert lines == []
    clock.now += 2.0
    shown.update(100)  # 500 images in 10 s
    assert lines == ["  epoch 3: 500/1000 images, 50 img/s, ETA 0:00:10"]
    clock.now += 5.0
    shown.update(100)
    assert len(lines) == 1  # the next line waits for another full interval


def test_a_short_epoch_prints_nothing():
    clock, lines = Clock(), []
    shown = ProgressLines(1, 64, lines.append, clock=clock)
    clock.now += LINE_EVERY / 2
    shown.update(64)
    shown.close()
    assert lines == []


@pytest.mark.parametrize(
    "reporter, kind", [(PrintReporter(echo=lambda line: None), ProgressLines), (SilentReporter(), NoProgress)]
)
def test_reporters_choose_their_display_off_a_terminal(reporter, kind, monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file, say
    assert isinstance(progress_of(reporter, 1, 100), kind)
