"""Snapshots within epochs (``start.snapshot_every``): where they fall, EPI starting pruning
mid-epoch with the learning-rate schedule untouched, and a run cut after such a start resuming
to exactly the uninterrupted result."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pat_ray
from _helpers import configured
from pat_ray.config import EPIStart, FixedStart, NeverStart
from pat_ray.config.start import Cadence, paper_scaled, parse_cadence
from pat_ray.training.checkpoint import read_checkpoint
from pat_ray.training.engine import train
from pat_ray.training.reporters import SilentReporter

ITERS = 23  # digits: 1,437 training images in batches of 64


def tiny(tmp_path, start, epochs: int = 3, **pruning):
    return configured(
        output_dir=tmp_path, start=start, training={"epochs": epochs}, pruning=pruning, tracking={"mlflow": False}
    )


@given(per_epoch=st.integers(1, 12), iters=st.integers(1, 200))
def test_n_per_epoch_falls_on_n_evenly_spaced_steps_the_last_at_the_epochs_end(per_epoch, iters):
    cadence = Cadence(per_epoch=per_epoch)
    due = [step for step in range(1, iters + 1) if cadence.due(step, 0, iters)]
    assert len(due) == min(per_epoch, iters) == cadence.count(1, iters)
    assert due[-1] == iters
    gaps = [b - a for a, b in zip([0, *due], due)]
    assert max(gaps) - min(gaps) <= 1


@given(every=st.integers(1, 50), iters=st.integers(1, 60), epochs=st.integers(1, 5))
def test_an_iteration_cadence_counts_iterations_across_epochs(every, iters, epochs):
    cadence = parse_cadence(f"{every} iterations")
    due = [(e, s) for e in range(epochs) for s in range(1, iters + 1) if cadence.due(s, e * iters + s, iters)]
    assert len(due) == cadence.count(epochs, iters) == epochs * iters // every


@pytest.mark.parametrize("value", [0.3, 2, 0, "0 iterations", "fast", "-1 epoch"])
def test_a_cadence_that_is_not_one_nth_of_an_epoch_or_iterations_is_refused_naming_the_field(value):
    with pytest.raises(ValueError, match="snapshot_every"):
        configured(start={"kind": "never", "snapshot_every": value})


def test_the_scaled_rule_is_the_papers_five_of_ninety_snapshots():
    assert paper_scaled(90) == 5 and paper_scaled(64) == 4 and paper_scaled(16) == 1 and paper_scaled(360) == 20
    assert EPIStart(window="scaled", patience=3).rule(180) == (10, 3)


def test_one_snapshot_per_epoch_is_taken_at_its_end(tmp_path):
    result = pat_ray.run(tiny(tmp_path, NeverStart()), local=True, quiet=True)
    assert [[p.position for p in h.snapshots] for h in result.history] == [[1.0], [2.0], [3.0]]
    assert [h.snapshots[-1].epi for h in result.history] == [h.epi for h in result.history]


def test_quarter_epoch_snapshots_fill_the_epi_curve(tmp_path):
    result = pat_ray.run(tiny(tmp_path, NeverStart(snapshot_every=0.25), epochs=2), local=True, quiet=True)
    positions = [p.position for h in result.history for p in h.snapshots]
    assert positions == pytest.approx([0.25 * k for k in range(1, 9)], abs=0.04)  # steps 6, 12, 18, 23 of 23
    epis = [p.epi for h in result.history for p in h.snapshots]
    assert epis[0] is None and all(0 < e <= 1 for e in epis[1:])
    assert result.history[-1].snapshot_seconds > 0


def test_epi_starts_pruning_mid_epoch_and_the_schedule_goes_on_unchanged(tmp_path):
    start = EPIStart(window=1, patience=0, tau=0.0, snapshot_every=0.25, latest_start=1)
    result = pat_ray.run(tiny(tmp_path / "epi", start), local=True, quiet=True)
    dense = pat_ray.run(tiny(tmp_path / "dense", NeverStart(snapshot_every=0.25)), local=True, quiet=True)
    assert result.trigger_epoch == 1 and result.trigger_position == pytest.approx(6 / ITERS * 2, abs=0.03)
    first = result.history[0]
    assert first.triggered and len(first.snapshots) == 2 and first.flops_kept < 1.0
    assert all(not h.snapshots for h in result.history[1:])  # no snapshots once pruning started
    assert abs(result.flops_kept - 0.5) < 0.015
    assert [h.lr for h in result.history] == [h.lr for h in dense.history]
    assert result.train_flops < dense.train_flops


class CrashAfter(SilentReporter):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def report(self, metrics, checkpoint=None):
        if metrics["epoch"] == self.epoch:
            raise KeyboardInterrupt("simulated crash")


def test_a_run_cut_after_a_mid_epoch_start_resumes_to_the_uninterrupted_result(tmp_path):
    start = EPIStart(window=2, patience=0, tau=0.0, snapshot_every=0.5, latest_start=2)  # fires at the third: 1.5
    whole = train(tiny(tmp_path / "whole", start, epochs=4), reporter=SilentReporter())
    assert whole.trigger_position == pytest.approx(1.5, abs=0.03)
    cut = tiny(tmp_path / "cut", start, epochs=4)
    with pytest.raises(KeyboardInterrupt):
        train(cut, reporter=CrashAfter(2))  # pruning steps 2 and 3 fall after the cut
    checkpoint = tmp_path / "cut" / "digits" / "last.pt"
    assert read_checkpoint(checkpoint).extra["trigger_position"] == whole.trigger_position
    resumed = train(cut, reporter=SilentReporter(), resume=checkpoint)
    keys = ("train_loss", "val_acc", "flops", "lr", "train_flops", "fingerprint", "triggered")
    assert [[getattr(h, k) for k in keys] for h in resumed.history] == [
        [getattr(h, k) for k in keys] for h in whole.history
    ]
    assert resumed.trigger_position == whole.trigger_position
    final = {k: v for k, v in read_checkpoint(tmp_path / "whole" / "digits" / "last.pt").state_dict.items()}
    for name, tensor in read_checkpoint(checkpoint).state_dict.items():
        torch.testing.assert_close(tensor, final[name], rtol=0, atol=0)


def test_a_fixed_start_waits_for_its_epochs_end_whatever_the_cadence(tmp_path):
    result = pat_ray.run(tiny(tmp_path, FixedStart(epoch=1, snapshot_every="5 iterations")), local=True, quiet=True)
    assert result.trigger_epoch == 1 and result.trigger_position == 1.0
    assert [p.position for p in result.history[0].snapshots] == pytest.approx([5 / ITERS * k for k in range(1, 5)])
