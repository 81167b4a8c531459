"""The PaT engine on digits: start policies prune when they say, and failures are clean."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import Dataset

import pat_ray
from _helpers import configured
from pat_ray.config import (
    AfterTrainingStart,
    Config,
    CriterionConfig,
    EPIStart,
    FixedStart,
    NeverStart,
)
from pat_ray.core.criterion import Criterion
from pat_ray.core.epi import should_trigger
from pat_ray.errors import TrainingDivergedError
from pat_ray.plugins import registry
from pat_ray.training.checkpoint import load_checkpoint, read_checkpoint


def tiny(tmp_path, start, epochs: int = 6, **pruning) -> Config:
    # MLflow off: no test here checks it, and logging a run is most of a short run's time
    return configured(
        output_dir=tmp_path, start=start, training={"epochs": epochs}, pruning=pruning, tracking={"mlflow": False}
    )


def test_fixed_start_prunes_exactly_at_that_epoch(tmp_path):
    result = pat_ray.run(tiny(tmp_path, FixedStart(epoch=2)), local=True, quiet=True)
    assert result.trigger_epoch == 2
    kept = [h.flops_kept for h in result.history]
    assert kept[0] == 1.0  # epoch 1 dense
    assert kept[1] < 1.0  # the first step happens right after epoch 2
    assert abs(result.flops_kept - 0.5) < 0.015
    assert [h.triggered for h in result.history] == [False, True, False, False, False, False]
    assert result.train_flops < result.dense_train_flops


def test_never_keeps_the_dense_model_and_still_records_epi(tmp_path):
    result = pat_ray.run(tiny(tmp_path, NeverStart(), epochs=4), local=True, quiet=True)
    assert result.trigger_epoch is None
    assert all(h.flops_kept == 1.0 for h in result.history)
    assert result.history[0].epi is None
    assert all(0 < h.epi <= 1 for h in result.history[1:])
    assert result.train_flops == pytest.approx(result.dense_train_flops)


def test_epi_prunes_at_the_first_epoch_satisfying_the_rule(tmp_path):
    start = EPIStart(window=2, patience=2, tau=0.9)
    result = pat_ray.run(tiny(tmp_path, start, epochs=8), local=True, quiet=True)
    curve = [h.epi for h in result.history if h.epi is not None or h.epoch == 1]
    expected = next((t + 1 for t in range(len(curve)) if should_trigger(curve[: t + 1], 2, 2, 0.9)), None)
    assert result.trigger_epoch == expected
    # after the trigger no more snapshots are taken
    if expected is not None:
        assert all(h.epi is None for h in result.history[expected:])


def test_permissive_epi_triggers_as_soon_as_the_window_is_full(tmp_path):
    start = EPIStart(window=3, patience=0, tau=0.0, latest_start=4)
    result = pat_ray.run(tiny(tmp_path, start), local=True, quiet=True)
    assert result.trigger_epoch == 4  # snapshots 1..3 fill the window; epoch 4 may fire
    assert result.flops_kept < 0.52


def test_after_training_fine_tunes_the_pruned_model(tmp_path):
    result = pat_ray.run(tiny(tmp_path, AfterTrainingStart(finetune_epochs=2), epochs=3), local=True, quiet=True)
    assert result.trigger_epoch == 3
    assert [h.phase for h in result.history][-2:] == ["finetune", "finetune"]
    assert len(result.history) == 5
    assert result.train_flops > result.dense_train_flops


def test_taylor_runs_with_a_pruning_schedule(tmp_path):
    cfg = tiny(tmp_path, FixedStart(epoch=0), epochs=3, steps=2, interval=5)
    cfg = configured(cfg, pruning={"criterion": {"name": "taylor"}})
    result = pat_ray.run(cfg, local=True, quiet=True)
    assert result.trigger_epoch == 0
    assert abs(result.flops_kept - 0.5) < 0.015


def test_final_checkpoint_reproduces_the_reported_accuracy(tmp_path):
    result = pat_ray.run(tiny(tmp_path, FixedStart(epoch=1), epochs=3), local=True, quiet=True)
    model, ckpt = load_checkpoint(result.checkpoint)
    data = registry.get_registry().create("dataset", "digits")
    model.eval()
    with torch.no_grad():
        inputs = torch.stack([x for x, _ in data.val])
        labels = torch.tensor([y for _, y in data.val])
        accuracy = (model(inputs).argmax(1) == labels).float().mean().item()
    assert accuracy == pytest.approx(result.final_accuracy, abs=1e-6)
    assert ckpt.extra["epoch"] == 3


class PoisonedDigits(Dataset):
    """Digits whose samples turn NaN after ``clean_reads`` reads (i.e. in epoch 2)."""

    def __init__(self, inner, clean_reads):
        self.inner, self.reads, self.clean_reads = inner, 0, clean_reads

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        self.reads += 1
        x, y = self.inner[i]
        return (x * math.nan if self.reads > self.clean_reads else x), y


class PoisonPlugin:
    @pat_ray.hookimpl
    def pat_ray_register_datasets(self, register):
        def poisoned():
            data = registry.get_registry().create("dataset", "digits")
            # the run's setup reads the first sample once (its labels are checked), then epoch 1 reads them all
            train = PoisonedDigits(data.train, clean_reads=1 + len(data.train))
            return type(data)(train, data.val, data.num_classes, data.input_shape)

        register("poisoned_digits", poisoned)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(plugins, tmp_path):
    plugins(PoisonPlugin(), name="poison")
    cfg = tiny(tmp_path, NeverStart(), epochs=3)
    cfg = configured(cfg, data={"name": "poisoned_digits"})
    with pytest.raises(TrainingDivergedError, match="NaN or infinite in epoch 2.*last.pt"):
        pat_ray.run(cfg, local=True, quiet=True)
    ckpt = read_checkpoint(tmp_path / "digits" / "latest" / "last.pt")
    assert ckpt.extra["epoch"] == 1


class CrashAfter:
    """A reporter that fails once the given epoch is checkpointed (a killed process)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def report(self, metrics, checkpoint=None):
        if metrics["epoch"] == self.epoch:
            raise KeyboardInterrupt("simulated crash")


def test_resume_continues_a_pruned_run_from_its_checkpoint(tmp_path):
    from pat_ray.training.engine import train

    cfg = tiny(tmp_path, FixedStart(epoch=2), epochs=5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, reporter=CrashAfter(3))
    checkpoint = tmp_path / "digits" / "last.pt"
    assert read_checkpoint(checkpoint).extra["epoch"] == 3
    from pat_ray.training.reporters import SilentReporter

    resumed = train(cfg, reporter=SilentReporter(), resume=checkpoint)
    assert [h.epoch for h in resumed.history] == [1, 2, 3, 4, 5]
    assert resumed.trigger_epoch == 2
    assert abs(resumed.flops_kept - 0.5) < 0.015
    assert resumed.train_flops < resumed.dense_train_flops


class LayoutSpy(Criterion):
    """Magnitude scores that record whether every conv weight is channels-last when scored."""

    seen: list[bool] = []

    def scores(self, model, graph):
        convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        LayoutSpy.seen.append(all(w.is_contiguous(memory_format=torch.channels_last) for w in convs))
        return registry.get_registry().create("criterion", "magnitude").scores(model, graph)


class LayoutSpyPlugin:
    @pat_ray.hookimpl
    def pat_ray_register_criteria(self, register):
        register("layout_spy", LayoutSpy)


def test_channels_last_survives_surgery(plugins, tmp_path):
    plugins(LayoutSpyPlugin(), name="layout-spy")
    LayoutSpy.seen = []
    cfg = tiny(tmp_path, FixedStart(epoch=1), epochs=3, criterion=CriterionConfig(name="layout_spy"))
    cfg = configured(cfg, training={"channels_last": True})
    result = pat_ray.run(cfg, local=True, quiet=True)
    assert len(LayoutSpy.seen) >= 3 and all(LayoutSpy.seen)  # snapshot + every step after surgery
    assert result.flops_kept == pytest.approx(0.5, abs=0.015) and result.final_accuracy > 0.5
    model, _ = load_checkpoint(result.checkpoint)
    x = torch.zeros(2, 1, 8, 8).to(memory_format=torch.channels_last)
    assert model(x).shape == (2, 10)


class Saves:
    """Records which epochs came with a checkpoint; optionally crashes after one epoch."""

    def __init__(self, crash_after=None):
        self.saved, self.crash_after = [], crash_after

    def report(self, metrics, checkpoint=None):
        if checkpoint is not None:
            self.saved.append(metrics["epoch"])
        if metrics["epoch"] == self.crash_after:
            raise KeyboardInterrupt("simulated crash")


def test_checkpoint_cadence_saves_every_k_epochs_and_where_the_run_changes_course(tmp_path):
    from pat_ray.training.engine import train

    cfg = configured(tiny(tmp_path, FixedStart(epoch=1), epochs=7), training={"checkpoint_every": 3})
    saves = Saves(crash_after=5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, reporter=saves)
    assert saves.saved == [1, 2, 3]  # the trigger, the epoch of the pruning steps, then every third
    assert read_checkpoint(tmp_path / "digits" / "last.pt").extra["epoch"] == 3
    resumed_saves = Saves()
    resumed = train(cfg, reporter=resumed_saves, resume=tmp_path / "digits" / "last.pt")
    assert resumed_saves.saved == [6, 7]  # epochs 4-5 are run again, not saved; 7 is the last
    assert [h.epoch for h in resumed.history] == [1, 2, 3, 4, 5, 6, 7]
