"""Ray Tune shell for the oracle sweep: one function trainable per trial, a report at the end.

Each trial is the same PaT pipeline with a different start policy (``oracle.trial_configs``).
A one-worker trial runs the engine inside the Tune trial and reports every epoch with its
checkpoint; a multi-worker trial launches its own TorchTrainer (Train V2), forwarded to Tune
by ``TuneReportCallback``. An interrupted sweep continues with ``Tuner.restore``: finished
trials are kept, unfinished or failed ones continue from their last checkpoint.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from ray.tune import Callback

from pat_ray.config import Config, OraclePolicy, config_from_dict
from pat_ray.core.architecture import Architecture
from pat_ray.core.cost.latency import LatencyTable
from pat_ray.core.epi import epi_curve
from pat_ray.distributed.recorder import result_from_checkpoint
from pat_ray.distributed.train import shipped_code, start_ray
from pat_ray.distributed.worker import copied_checkpoint, opened_checkpoint, report_with_checkpoint
from pat_ray.plugins.registry import ShippedPlugin, get_registry, install_shipped, shipped_plugins
from pat_ray.plugins.user_code import trust, trusted_modules
from pat_ray.run_folder import RunFolder
from pat_ray.storage import Location
from pat_ray.sweep.plan import (
    OracleSummary,
    TrialOutcome,
    epi_policy,
    outcome_from_result,
    seeds_of,
    summarize,
    trial_configs,
    trial_label,
    write_summary,
)
from pat_ray.sweep.report import write_report
from pat_ray.training.checkpoint import read_checkpoint
from pat_ray.training.latency_budget import TABLE_FILE, measure_for_config
from pat_ray.training.records import describe_trigger
from pat_ray.training.run_state import RunState

CALIBRATION_SOURCES: tuple[OraclePolicy, ...] = ("never", "after_training", "epi")  # longest-watched dense phase first


def run_oracle(
    config: Config,
    name: str | None = None,
    resume: bool | str = False,
    storage: Location | None = None,
    echo=print,
) -> OracleSummary:
    """Run (or with ``resume``, continue) the oracle sweep of ``config``; write and return its report.

    The sweep lives in ``<storage or output_dir/oracle>/<name>/<start time>`` (a folder or a
    URI), runs' scheme: Tune's state, the trials' checkpoints, ``oracle.json``, ``report.md``
    and the plots. ``name`` defaults to ``config.name``; ``resume=True`` continues the newest
    sweep of that name, ``resume="<version>"`` that one. Plugins registered in this process
    with ``register_plugin`` are registered in every trial too.
    """
    from ray import tune

    sweeps = (storage or Location.of(config.output_dir) / "oracle") / (name or config.name)
    if resume:
        sweep = RunFolder.of(sweeps, resume)
        sweep_dir = sweep.location
        if not tune.Tuner.can_restore(sweep_dir.filesystem()[1], storage_filesystem=sweep_dir.filesystem()[0]):
            raise FileNotFoundError(f"no oracle sweep to resume at {sweep_dir}")
    else:
        sweep = RunFolder.new(sweeps)
        sweep_dir = sweep.location
    start_ray(shipped_code(config))
    with sweep.locked("sweep") as lock:
        lock.announce()
        sweep.point_latest()
        return _sweep(config, sweep_dir, bool(resume), echo)


def _sweep(config: Config, sweep_dir: Location, resume: bool, echo) -> OracleSummary:
    """The sweep itself, run while this process holds its folder."""
    from ray import tune

    storage_fs, sweep_path = sweep_dir.filesystem()
    storage_path, name = sweep_path.rpartition("/")[0], sweep_dir.name
    trials = trial_configs(config)
    trainable = tune.with_resources(
        tune.with_parameters(
            _run_trial,
            trials={label: c.model_dump(mode="json") for label, c in trials.items()},
            sweep_dir=sweep_dir.uri,
            plugins=shipped_plugins(),
            trusted=sorted(trusted_modules()),  # the modules the config's targets may import, in each trial too
            latency_table=_shared_latency_table(config, sweep_dir, echo),
        ),
        _trial_resources(config),
    )
    if resume:
        echo(f"pat-ray oracle: resuming sweep {name!r} in {sweep_dir}")
        tuner = tune.Tuner.restore(
            sweep_path, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=storage_fs
        )
    else:
        echo(
            f"pat-ray oracle: {len(trials)} trials ({', '.join(trials)}), "
            f"{config.oracle.max_concurrent_trials} at a time, in {sweep_dir}"
        )
        tuner = tune.Tuner(
            trainable,
            param_space={"label": tune.grid_search(list(trials))},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=config.oracle.max_concurrent_trials,
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage_path,
                storage_filesystem=storage_fs,
                verbose=0,
                callbacks=[TrialProgress(echo, len(trials))],
            ),
        )
    outcomes, snapshots, results = _collect(tuner.fit(), trials)
    source, curves = _calibration_curves(config, snapshots)
    summary = summarize(f"{Path(storage_path).name}/{name}", config, outcomes, curves, source)
    summary.folder = sweep_dir.uri
    with tempfile.TemporaryDirectory(prefix="pat_ray_report_") as scratch:
        written = [write_report(Path(scratch), summary)]
        if config.tracking.mlflow:
            from pat_ray.tracking.mlflow_log import log_oracle

            summary.mlflow_run_id = log_oracle(config, summary, results)
        written.append(write_summary(Path(scratch), summary))
        for file in sorted(Path(scratch).iterdir()):  # report, plots, then oracle.json: it marks the sweep done
            if file.name != written[-1].name:
                (sweep_dir / file.name).upload(file)
        (sweep_dir / written[-1].name).upload(written[-1])
    return summary


def _collect(grid, trials: dict[str, Config]) -> tuple[list[TrialOutcome], dict[str, list[Architecture]], list]:
    """Each trial's outcome (failed ones too), its snapshots, and its result, from its final checkpoint."""
    outcomes, snapshots, results = [], {}, []
    for trial in grid:
        label = trial.config["label"]
        if trial.error is not None or trial.checkpoint is None:
            outcomes.append(_failed(label, trials[label], trial))
            continue
        with opened_checkpoint(trial.checkpoint) as path:
            ckpt = read_checkpoint(path)
        state = RunState.from_checkpoint(ckpt)
        # wall = the trial's epoch times, so a resumed trial counts each epoch once
        run = result_from_checkpoint(trials[label], ckpt, None, sum(r.epoch_seconds for r in state.history))
        outcomes.append(outcome_from_result(label, run))
        snapshots[label] = [Architecture.from_dict(a) for a in state.tracker["snapshots"]]
        results.append((label, run))
    return outcomes, snapshots, results


def _calibration_curves(config: Config, snapshots: dict[str, list[Architecture]]) -> tuple[str | None, list]:
    """Per seed, the EPI curve of the trial that watched the dense phase longest; the same
    policy for every seed, so the curves are comparable."""
    seeds = seeds_of(config)
    labels = {policy: [trial_label(policy, seed, seeds) for seed in seeds] for policy in CALIBRATION_SOURCES}
    source = next((p for p in CALIBRATION_SOURCES if all(label in snapshots for label in labels[p])), None)
    if source is None:
        return None, []
    epi = epi_policy(config)
    similarity = get_registry().create("similarity", epi.similarity)
    curves = [snapshots[label] for label in labels[source]]
    scheduled = config.start.cadence.count(config.training.epochs, None)  # None: an iteration cadence
    return source, [epi_curve(curve, epi.rule(scheduled or len(curve))[0], similarity) for curve in curves]


def _shared_latency_table(config: Config, sweep_dir: Location, echo) -> dict | None:
    """For a budget in step time, one table for every trial of the sweep: tables timed per
    trial would price the same sub-network with different noise. Timed once by a Ray task
    holding what one trial worker holds (its GPU, if any), kept in the sweep for ``--resume``."""
    import ray

    budget = config.pruning.budget
    if budget.measure != "latency" or budget.latency_table is not None:
        return None  # not a time budget, or every trial reads the configured file
    path = sweep_dir / TABLE_FILE
    if path.is_file():
        return json.loads(path.read_text())
    echo("pat-ray oracle: timing the model's layers once, for every trial's step-time budget")
    measure = ray.remote(num_cpus=1, num_gpus=1 if config.scaling.use_gpu else 0)(_measure_table)
    table = ray.get(measure.remote(config.model_dump(mode="json")))
    path.write_text(json.dumps(LatencyTable.from_dict(table).to_dict(), indent=1))
    return table


def _measure_table(config: dict) -> dict:
    """In a Ray worker: the config is validated again there, against that worker's plugins."""
    return measure_for_config(config_from_dict(config, source="oracle latency table"))


def _trial_name(trial) -> str:
    return trial.config["label"]


def _trial_resources(config: Config) -> dict[str, float]:
    """An in-process trial holds its CPU (or GPU); a multi-worker trial only drives its workers."""
    if config.scaling.num_workers > 1:
        # no CPU, or the driver's share would keep the workers' placement group from fitting;
        # Tune refuses an empty request, so it asks for a token of memory instead
        return {"cpu": 0, "memory": 2**20}
    return {"cpu": 1, "gpu": 1 if config.scaling.use_gpu else 0}


def _failed(label: str, config: Config, trial) -> TrialOutcome:
    start = config.start.grid_epoch
    error = str(trial.error or "the trial reported no checkpoint")
    return TrialOutcome(label=label, policy=config.start.kind, start_epoch=start, error=error)


def _run_trial(
    params: dict[str, Any],
    trials: dict[str, dict],
    sweep_dir: str,
    plugins: list[ShippedPlugin],
    trusted: list[str],
    latency_table: dict | None,
) -> None:
    """One trial inside a Tune actor: the engine here, or a TorchTrainer for several workers."""
    from ray import tune

    from pat_ray.training.engine import train

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" line per epoch
    install_shipped(plugins)
    trust(*trusted)
    label = params["label"]
    config = config_from_dict(trials[label], source=f"oracle trial {label}")
    config = config.model_copy(update={"output_dir": tempfile.mkdtemp(prefix=f"pat_ray_{label}_")})
    if config.scaling.num_workers > 1:
        from ray.tune.integration.ray_train import TuneReportCallback

        from pat_ray.distributed.train import run_on_ray

        # same run name + storage on a restored sweep: Train continues the run it had begun
        result = run_on_ray(
            config,
            storage=Location.of(sweep_dir) / "train",
            run_name=label,
            callbacks=[TuneReportCallback()],
            latency_table=latency_table,
        )
        final = Path(str(result.checkpoint))  # the trial's own run folder is local
        report_with_checkpoint(tune.report, tune.Checkpoint, _scalars(result.history[-1].to_dict()), final)
        return
    checkpoint = tune.get_checkpoint()
    resume = copied_checkpoint(checkpoint) if checkpoint is not None else None
    table = LatencyTable.from_dict(latency_table) if latency_table else None
    train(config, reporter=TuneReporter(), resume=resume, latency_table=table)


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """Tune's loggers take numbers and strings; lists (snapshot counts) and None stay in the checkpoint."""
    return {k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool)}


class TuneReporter:
    """Reports every epoch with its checkpoint to Tune, so a restored trial continues mid-run."""

    def report(self, metrics: dict[str, Any], checkpoint: Path | None = None) -> None:
        from ray import tune

        report_with_checkpoint(tune.report, tune.Checkpoint, _scalars(metrics), checkpoint)


class TrialProgress(Callback):
    """One line when a trial starts pruning, finishes or fails, with the sweep's count."""

    def __init__(self, echo, total: int) -> None:
        self.echo, self.total, self.done = echo, total, 0

    def _label(self, trial) -> str:
        return trial.config.get("label", trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get("triggered"):
            where = describe_trigger(result["epoch"], result.get("trigger_position"))
            self.echo(f"  [{self._label(trial)}] pruning starts at {where}")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.done += 1
        acc, kept = (trial.last_result.get(k, float("nan")) for k in ("val_acc", "flops_kept"))
        self.echo(f"  [{self._label(trial)}] done ({self.done}/{self.total}): acc {acc:.4f}, FLOPs kept {kept:.3f}")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.done += 1
        self.echo(f"  [{self._label(trial)}] FAILED ({self.done}/{self.total}); see {trial.local_path}")
