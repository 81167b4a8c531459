"""A run ends at its budget: the pruning plan (``pat_ray.config.plan``) against every schedule, the
latest start in a run, the summary's words, and the status a run that ends above its budget gets."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import pat_ray
from _helpers import configured
from pat_ray.cli import main
from pat_ray.config import Config
from pat_ray.config.plan import FINETUNE_SHARE, auto_latest_start, plan_pruning, pruning_iterations
from pat_ray.errors import ConfigError

DIGITS = str(Path(__file__).parents[1] / "pipelines" / "digits.yaml")
schedules = st.tuples(st.integers(1, 40), st.integers(1, 60), st.integers(1, 5), st.integers(1, 30))


def config_for(epochs: int, steps: int, interval: int, start: dict) -> Config:
    return Config().override(
        f"training.epochs={epochs}",
        "training.schedule.warmup_epochs=0",
        f"pruning.steps={steps}",
        f"pruning.interval={interval}",
        f"start={start}",
    )


@settings(max_examples=200, deadline=None)
@given(schedules)
def test_an_automatic_latest_start_leaves_the_steps_and_a_quarter_of_the_schedule_or_is_refused(schedule):
    epochs, ipe, steps, interval = schedule
    plan = plan_pruning(config_for(epochs, steps, interval, {"kind": "epi"}), ipe)
    needed = pruning_iterations(steps, interval)
    finetune = max(1, math.ceil(FINETUNE_SHARE * epochs))
    if plan.problems:
        assert auto_latest_start(epochs, ipe, needed) < 0 and plan.latest_start is not None
        (problem,) = plan.problems
        assert problem.startswith(f"training.epochs {epochs}:") and "set training.epochs >= " in problem
        enough = int(re.search(r"training.epochs >= (\d+)", problem).group(1))
        assert not plan_pruning(config_for(enough, steps, interval, {"kind": "epi"}), ipe).problems  # it works
        return
    assert plan.latest_start is not None and plan.latest_start >= 0
    end_of_pruning = plan.latest_start * ipe + needed
    assert end_of_pruning + finetune * ipe <= epochs * ipe  # the steps, then at least the fine-tuning share


@settings(max_examples=200, deadline=None)
@given(schedules, st.integers(0, 39))
def test_a_fixed_start_whose_steps_end_after_the_schedule_is_refused_with_values_that_work(schedule, epoch):
    epochs, ipe, steps, interval = schedule
    if epoch >= epochs:
        return
    plan = plan_pruning(config_for(epochs, steps, interval, {"kind": "fixed", "epoch": epoch}), ipe)
    fits = epoch * ipe + pruning_iterations(steps, interval) <= epochs * ipe
    assert not plan.problems if fits else len(plan.problems) == 1
    assert plan.latest_start is None  # a fixed start is its own plan
    for remedy in re.findall(r"(start\.epoch <= \d+|training\.epochs >= \d+)", " ".join(plan.problems)):
        key, value = remedy.split(" <= " if "<=" in remedy else " >= ")
        changed = {"start.epoch": (epochs, int(value)), "training.epochs": (int(value), epoch)}[key]
        fixed = config_for(changed[0], steps, interval, {"kind": "fixed", "epoch": changed[1]})
        assert not plan_pruning(fixed, ipe).problems, remedy


def test_a_policy_that_cannot_fire_before_its_latest_start_is_a_note_not_an_error():
    plan = plan_pruning(Config().override("training.epochs=4"), 23)  # r = k = 5: 6 snapshots, 1 by epoch 1
    assert plan.latest_start == 1 and not plan.problems
    (note,) = plan.notes
    assert "EPI needs 6 snapshots" in note and "start.snapshot_every" in note
    quarter = plan_pruning(Config().override("training.epochs=12", "start.snapshot_every=0.25"), 23)
    assert not quarter.notes and quarter.latest_start == 7


def test_an_explicit_latest_start_must_leave_room_for_the_steps():
    with pytest.raises(ConfigError, match=r"start.latest_start \(4\) must be < training.epochs \(4\)"):
        Config().override("training.epochs=4", "start.latest_start=4")
    plan = plan_pruning(Config().override("training.epochs=4", "start.latest_start=3"), 23)
    assert plan.problems == [
        "start.latest_start 3: the 3 pruning steps take up to 33 iterations (pruning.steps 3 x (pruning.interval 10 "
        "+ 1)) at 23 iterations per epoch, so they would not end within training.epochs 4; set start.latest_start "
        "<= 2 or training.epochs >= 5"
    ]


def test_the_digits_run_of_four_epochs_ends_at_its_budget_and_says_how_pruning_started(tmp_path):
    args = ["run", DIGITS, "training.epochs=4", f"output_dir={tmp_path}", "tracking.mlflow=false"]
    result = CliRunner().invoke(main, [*args, "--local"])
    assert result.exit_code == 0, result.output
    assert "warning: start: EPI needs 6 snapshots" in result.output
    assert "pruning started:  EPI did not fire by epoch 1: pruning started there (start.latest_start)" in result.output
    kept = float(re.search(r"FLOPs kept:\s+([0-9.]+)", result.output).group(1))
    assert kept <= 0.5 + pat_ray.BUDGET_TOLERANCE
    status = (tmp_path / "digits" / "latest" / "status.json").read_text()
    assert '"status": "finished"' in status and '"started_by": "latest_start"' in status


def test_a_too_short_schedule_is_refused_by_validate_and_by_the_run(tmp_path):
    for command in (["validate"], ["run", "--local"]):
        args = [*command[:1], DIGITS, "training.epochs=2", f"output_dir={tmp_path}", *command[1:]]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert "training.epochs 2: the 3 pruning steps take up to 33 iterations" in result.output
        assert "set training.epochs >= 3 or pruning.interval <= 6" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "digits").exists() or not any((tmp_path / "digits").glob("*/last.pt"))


class Idle:
    """A surgery backend that removes nothing: the run cannot reach its budget."""

    def apply(self, model, graph, architecture, optimizer=None):
        return None


def test_a_run_that_ends_above_its_budget_does_not_call_itself_finished(plugins, tmp_path):
    class Backends:
        @pat_ray.hookimpl
        def pat_ray_register_surgery_backends(self, register):
            register("idle", Idle)

    plugins(Backends(), name="idle-backend")
    config = configured(
        output_dir=tmp_path,
        training={"epochs": 3},
        start={"kind": "fixed", "epoch": 1},
        pruning={"backend": "idle", "steps": 1},
        tracking={"mlflow": False},
    )
    result = pat_ray.run(config, local=True, quiet=True)
    assert not result.at_budget and result.status() == "off_budget" and result.budget_share == 1.0
    status = (tmp_path / "digits" / "latest" / "status.json").read_text()
    assert '"status": "off_budget"' in status
    ran = CliRunner().invoke(
        main,
        [
            "run",
            DIGITS,
            "training.epochs=3",
            "start={kind: fixed, epoch: 1}",
            "pruning.backend=idle",
            "pruning.steps=1",
            f"output_dir={tmp_path}",
            "tracking.mlflow=false",
            "--local",
        ],
    )
    assert ran.exit_code == 1 and "above its budget of 0.5; its status is off_budget" in ran.output, ran.output
