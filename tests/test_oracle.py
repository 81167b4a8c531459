"""The oracle sweep: its plan and verdict (pure), then real Ray Tune sweeps on 2 CPUs."""

from __future__ import annotations

import json
import statistics
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from _helpers import configured, fail_once_after
from pat_ray.cli import main
from pat_ray.config import Config, EarlyBirdStart, EPIStart, FixedStart, NeverStart, config_from_dict
from pat_ray.sweep.plan import (
    RESULT_FILE,
    OracleSummary,
    TrialOutcome,
    read_summary,
    summarize,
    trial_configs,
    write_summary,
)
from pat_ray.sweep.report import PLOTS, REPORT_FILE, markdown, write_report
from pat_ray.training.checkpoint import read_checkpoint

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def small_config(tmp_path, **oracle) -> Config:
    return config_from_dict(
        {
            "name": "tiny",
            "output_dir": str(tmp_path / "runs"),
            "training": {"epochs": 5},
            "pruning": {"steps": 2, "interval": 5},  # two quick steps: a start as late as epoch 4 fits
            "start": {"kind": "epi", "window": 2, "patience": 1, "tau": 0.9},
            "oracle": {"start_epochs": [0, 2, 3], "policies": ["epi"], "max_concurrent_trials": 2, **oracle},
            "tracking": {"mlflow": True, "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "o"},
        }
    )


def with_time_budget(config: Config, fraction: float = 0.75) -> Config:
    return configured(config, pruning={"budget": {"measure": "latency", "fraction": fraction, "latency_grid": 3}})


def final_checkpoint(trial_folder):
    """The last checkpoint a trial (or a trial's Train run) left, by its epoch."""
    return max((read_checkpoint(p) for p in trial_folder.glob("checkpoint_*/last.pt")), key=lambda c: c.extra["epoch"])


def test_trial_configs_differ_only_in_start_policy_and_name(tmp_path):
    config = small_config(tmp_path, policies=["epi", "early_bird", "never", "after_training"])
    trials = trial_configs(config)
    assert list(trials) == ["fixed-0", "fixed-2", "fixed-3", "epi", "early_bird", "never", "after_training"]
    assert trials["fixed-2"].start == FixedStart(epoch=2)
    assert trials["epi"].start == config.start  # the pipeline's own EPI settings are the ones tested
    assert trials["early_bird"].start == EarlyBirdStart()
    assert trials["never"].start == NeverStart()
    for label, trial in trials.items():
        assert trial.name == f"tiny-{label}"
        assert not trial.tracking.mlflow  # the sweep logs parent + children itself
        assert trial.training == config.training and trial.pruning == config.pruning
    default = trial_configs(Config())  # 30 epochs: 0 and every 10% up to 2/3
    assert [k for k in default if k.startswith("fixed")] == [f"fixed-{e}" for e in (0, 3, 6, 9, 12, 15, 18)]
    assert trial_configs(Config(start=FixedStart(epoch=3)))["epi"].start == EPIStart()


def outcome(label, policy, start, acc, flops, curve=()):
    return TrialOutcome(label, policy, start, acc, 0.5, flops, flops / 10, 1.0, 5, list(curve))


def test_verdict_and_calibrated_tau_from_outcomes(tmp_path):
    config = small_config(tmp_path)
    curve = [None, 0.80, 0.85, 0.95, 0.97]  # window 2, patience 1: epoch 3 fires for tau in (0.85, 0.95]
    trials = [
        outcome("fixed-0", "fixed", 0, 0.90, 5.0),
        outcome("fixed-2", "fixed", 2, 0.95, 7.0),
        outcome("fixed-3", "fixed", 3, 0.95, 8.0),  # ties the best: the earlier (cheaper) start wins
        outcome("epi", "epi", 3, 0.949, 8.0, curve[:3]),
        TrialOutcome("fixed-4", "fixed", 4, error="boom"),
    ]
    summary = summarize("s", config, trials, [curve], "never")
    assert summary.best_fixed == summary.reference == "fixed-2"  # one seed: no standard error
    verdict = summary.verdict()
    assert verdict.gap_points == pytest.approx(-0.1)
    assert verdict.cost_share == pytest.approx(8.0 / 20.0)  # the failed trial cost nothing
    assert summary.calibrated["epoch"] == 3  # epoch 2 cannot fire: the window is not full yet
    text = markdown(summary)
    for label in ("fixed-0", "fixed-2", "fixed-3", "epi"):
        assert f"| {label} |" in text
    assert "| fixed-4 | - | 4 | failed: boom" in text
    assert "**-0.10 points**" in text and "cost <= 1/N of the grid: **not met**" in text  # 0.40 > 1/3
    assert OracleSummary.from_json(summary.to_json()) == summary


def test_report_command_redraws_a_sweep_and_rejects_other_folders(tmp_path):
    summary = summarize("s", small_config(tmp_path), [outcome("fixed-0", "fixed", 0, 0.9, 5.0)], [], None)
    write_summary(tmp_path, summary)
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "| fixed-0 | PaT, fixed start | 0 | 0.9000 ± 0.0000 | 1 |" in result.output
    assert "No verdict: the sweep has no finished EPI trial." in result.output
    for name in PLOTS.values():
        assert (tmp_path / name).read_bytes().startswith(PNG_SIGNATURE)
    bad = CliRunner().invoke(main, ["report", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and "is not an oracle sweep folder" in bad.output
    assert "Traceback" not in bad.output


@pytest.mark.usefixtures("local_ray")
def test_sweep_resumes_a_failed_trial_and_reports_every_trial(plugins, tmp_path):
    import mlflow

    from pat_ray.distributed.tune import run_oracle

    # a budget in step time: the sweep times the layers once and every trial prices with that table
    config, name = with_time_budget(small_config(tmp_path)), f"sweep-{uuid.uuid4().hex[:8]}"
    # EPI may take until epoch 4 to fire (its window of 2 fills at epoch 3), not only until the auto latest start
    config = config.override("start.latest_start=4")
    plugins(fail_once_after(3, tmp_path / "fault-done"), name="fail-once")  # shipped to trials
    first = run_oracle(config, name=name, echo=lambda line: None)
    failed = [t.label for t in first.trials if not t.ok]
    assert len(failed) == 1  # the first trial to finish epoch 3, whichever that was

    summary = run_oracle(config, name=name, resume=True, echo=lambda line: None)  # the newest sweep of the name
    assert sorted(t.label for t in summary.trials) == ["epi", "fixed-0", "fixed-2", "fixed-3"]
    folder = tmp_path / "runs" / "oracle" / name / "latest"
    assert summary.folder == first.folder == str(folder.resolve())
    table = json.loads((folder / "latency_table.json").read_text())
    for trial in summary.trials:
        assert trial.ok and trial.epochs == 5
        assert 0.0 < trial.accuracy <= 1.0 and trial.train_flops > 0 and trial.wall_seconds > 0
        final = final_checkpoint(folder / trial.label)
        assert final.extra["history"][-1]["time_kept"] == pytest.approx(0.75, abs=0.03)
        assert final.extra["latency_table"] == table  # the resumed fixed-2 too: one table, never timed again
    for label in {"fixed-0", "fixed-2", "fixed-3"} - set(failed):
        assert summary.trial(label) == first.trial(label)  # finished trials are kept, not re-run
    assert summary.trial("fixed-2").start_epoch == 2
    epi = summary.trial("epi")
    assert epi.start_epoch is not None and 3 <= epi.start_epoch < 5  # window 2 fills at epoch 3
    assert summary.calibration_source == "epi" and summary.calibrated is not None

    reported = [json.loads(line)["epoch"] for line in (folder / failed[0] / "result.json").read_text().splitlines()]
    assert reported == [1, 2, 3, 4, 5]  # continued from its epoch-3 checkpoint, not from scratch
    assert read_summary(folder) == summary
    report = (folder / REPORT_FILE).read_text()
    for trial in summary.trials:
        assert f"| {trial.label} | " in report and f"{trial.accuracy:.4f}" in report
    for plot in PLOTS.values():
        assert (folder / plot).read_bytes().startswith(PNG_SIGNATURE)

    client = mlflow.MlflowClient(tracking_uri=config.tracking.tracking_uri)
    experiment = client.get_experiment_by_name("o")
    parent = client.get_run(summary.mlflow_run_id)
    assert parent.data.metrics["epi_cost_share_of_grid"] == pytest.approx(summary.verdict().cost_share)
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(c.data.tags["trial"] for c in children) == ["epi", "fixed-0", "fixed-2", "fixed-3"]
    assert all(c.data.metrics["final_accuracy"] > 0 for c in children)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {REPORT_FILE, "oracle.json", *PLOTS.values()} <= artifacts


@pytest.mark.usefixtures("local_ray")
def test_a_multi_worker_trial_runs_its_own_torch_trainer(tmp_path):
    from pat_ray.distributed.tune import run_oracle

    config = with_time_budget(small_config(tmp_path, start_epochs=[1], policies=[], max_concurrent_trials=1))
    config = configured(config, training={"epochs": 3}, scaling={"num_workers": 2}, tracking={"mlflow": False})
    name = f"mw-{uuid.uuid4().hex[:8]}"
    summary = run_oracle(config, name=name, echo=lambda line: None)
    (trial,) = summary.trials
    assert trial.ok and trial.start_epoch == 1 and trial.epochs == 3
    # the trial's Train run lives in the sweep, under a fixed name a restored sweep would continue;
    # its workers priced with the sweep's table, handed through the TorchTrainer
    final = final_checkpoint(tmp_path / "runs" / "oracle" / name / "latest" / "train" / "fixed-1")
    assert final.extra["history"][-1]["time_kept"] == pytest.approx(0.75, abs=0.03)
    sweep_table = tmp_path / "runs" / "oracle" / name / "latest" / "latency_table.json"
    assert final.extra["latency_table"] == json.loads(sweep_table.read_text())


def test_write_report_marks_the_chosen_epochs(tmp_path):
    curve = [None, 0.8, 0.85, 0.95, 0.97]
    trials = [outcome("fixed-0", "fixed", 0, 0.9, 5.0), outcome("epi", "epi", 3, 0.95, 6.0)]
    summary = summarize("s", small_config(tmp_path), trials, [curve], "never")
    path = write_report(tmp_path, summary)
    assert path.name == REPORT_FILE
    assert "Calibrated tau = **" in path.read_text()


def test_seeds_run_every_trial_once_per_seed(tmp_path):
    config = small_config(tmp_path, policies=["epi", "never"])
    config = configured(config, oracle={"seeds": [0, 1, 2]})
    trials = trial_configs(config)
    assert len(trials) == 3 * 5
    assert trials["fixed-2-s1"].start == FixedStart(epoch=2) and trials["fixed-2-s1"].training.seed == 1
    assert trials["epi-s2"].start == config.start and trials["epi-s2"].training.seed == 2
    assert {c.training.seed for label, c in trials.items() if label.startswith("never")} == {0, 1, 2}


def seeded(group, policy, start, accuracies, flops=5.0):
    return [
        TrialOutcome(f"{group}-s{seed}", policy, start, acc, 0.5, flops, flops / 10, 1.0, 5, seed=seed)
        for seed, acc in enumerate(accuracies)
    ]


def test_the_reference_is_the_earliest_start_within_one_standard_error_of_the_best(tmp_path):
    trials = [
        *seeded("fixed-0", "fixed", 0, [0.80, 0.81, 0.79]),
        *seeded("fixed-2", "fixed", 2, [0.900, 0.910, 0.905]),  # mean 0.905: within one SE of the best
        *seeded("fixed-4", "fixed", 4, [0.915, 0.895, 0.920]),  # mean 0.910 (the best), SE 0.0076
        *seeded("epi", "epi", None, [0.904, 0.902, 0.909]),
    ]
    for t, start in zip(trials[-3:], (2, 3, 2)):
        t.start_epoch = start
    summary = summarize("s", small_config(tmp_path), trials, [[None, 0.5, 0.9, 0.99]] * 3, "never")
    assert summary.best_fixed == "fixed-4" and summary.reference == "fixed-2"
    v = summary.verdict()
    assert v.gap_points == pytest.approx(100 * (0.905 - 0.905))
    fixed = [[0.80, 0.81, 0.79], [0.900, 0.910, 0.905], [0.915, 0.895, 0.920]]
    pooled = (sum(statistics.variance(a) for a in fixed) / 3) ** 0.5  # equal seeds per group
    assert v.noise_std == pytest.approx(pooled)
    assert v.tolerance_points == pytest.approx(max(100 * pooled, 0.3))
    assert v.cost_share == pytest.approx(5.0 / 15.0)
    text = markdown(summary)
    assert "| epi | PaT + EPI | 2, 3, 2 | 0.9050 ± 0.0036 | 3 |" in text
    assert "**epoch 2**" in text and "| fixed-4-s2 | 2 | 4 | 0.9200 |" in text
    assert OracleSummary.from_json(summary.to_json()) == summary


def test_an_old_single_seed_summary_still_reads(tmp_path):
    summary = read_summary(Path(__file__).parents[1] / "benchmarks" / "results" / "oracle_digits")
    assert summary.group("epi").n == 1 and len(summary.calibration_curves) == 1
    assert summary.verdict() is not None


def test_held_out_calibration_applies_the_other_seeds_tau_and_reads_the_grid(tmp_path):
    config = small_config(tmp_path)
    config = configured(config, start=EPIStart(window=1, patience=1, tau=0.99))
    trials = [
        *seeded("fixed-0", "fixed", 0, [0.70, 0.71, 0.72]),
        *seeded("fixed-2", "fixed", 2, [0.90, 0.91, 0.92]),
        *seeded("fixed-4", "fixed", 4, [0.88, 0.89, 0.90]),
        *seeded("epi", "epi", 4, [0.88, 0.89, 0.90]),
    ]
    # index i is epoch i + 1; every seed's EPI first reaches 0.93 at epoch 2 (the reference)
    curves = [[None, 0.93, 0.95, 0.99], [None, 0.93, 0.96, 0.99], [None, 0.93, 0.97, 0.99]]
    summary = summarize("s", config, trials, curves, "never")
    summary.seeds = [0, 1, 2]
    assert summary.reference == "fixed-2"
    rows = summary.held_out_calibration()
    assert [r.seed for r in rows] == [0, 1, 2]
    for row, accuracy in zip(rows, [0.90, 0.91, 0.92]):
        assert row.tau <= 0.93
        assert row.trigger_epoch == row.grid_epoch == 2 and row.accuracy == accuracy
    summary.calibration_curves = [curves[0], [None, 0.5, 0.6, 0.7], curves[2]]  # seed 1 stabilizes later
    late = summary.held_out_calibration()[1]
    assert late.trigger_epoch is None and late.accuracy is None  # never fires; no dense trial to read
    text = markdown(summary)
    assert "| 0 | " in text and "| 2 | fixed-2 | 0.9000 |" in text
    assert "epi-s1 0.8900 = fixed-4-s1 0.8900" in text  # an EPI trial on a grid epoch repeats that trial


@pytest.mark.parametrize(
    "damage, field",
    [
        (lambda d: d["trials"][0].update(accuracy="half"), "trials.0.accuracy"),
        (lambda d: d.update(trials={"not": "a list"}), "trials"),
        (lambda d: d.update(seeds="0, 1"), "seeds"),
        (lambda d: d.pop("name"), "name"),
        (lambda d: d["trials"][0].update(epi_curve=[0.9, "high"]), "trials.0.epi_curve.1"),
        (lambda d: d.clear() or d.update(x=1), "name"),
    ],
)
def test_a_malformed_oracle_json_names_the_file_and_the_field(tmp_path, damage, field):
    summary = summarize("s", small_config(tmp_path), [outcome("fixed-0", "fixed", 0, 0.9, 5.0)], [], None)
    data = json.loads(summary.to_json())
    damage(data)
    (tmp_path / RESULT_FILE).write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / RESULT_FILE) in lines[0] and f"field {field}:" in lines[0], lines
    assert "Traceback" not in result.output


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_an_oracle_json_that_is_not_a_summary_names_the_file(tmp_path, text):
    (tmp_path / RESULT_FILE).write_text(text)
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2 and str(tmp_path / RESULT_FILE) in result.output and "Traceback" not in result.output
