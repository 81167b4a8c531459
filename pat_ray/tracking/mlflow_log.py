"""MLflow tracking of a finished run: params, per-epoch metrics, artifacts.

Logged by one writer (the driver) once the run has ended, from the run's own history: SQLite
stores lock under concurrent writers, and a tracking failure can then never cost the
training result, it is reported and the result is returned as usual. Store: the config's
``tracking.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the
working directory.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from pat_ray.config import Config, EPIStart, config_to_yaml


class TrackingWarning(UserWarning):
    """MLflow logging failed; the training result is unaffected."""


def tracking_uri(config: Config) -> str:
    return (
        config.tracking.tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or (f"sqlite:///{Path('mlflow.db').resolve()}")
    )


def log_run(config: Config, result) -> str | None:
    """Log ``result`` to MLflow; returns the MLflow run id, or None (with a warning) on failure."""
    return _guarded(config, f"the run's results are in {result.checkpoint}", lambda: _log(config, result))


def log_oracle(config: Config, summary, results: list) -> str | None:
    """Log an oracle sweep: a parent run with the report, one child run per finished trial.

    ``results`` pairs each finished trial's label with its ``RunResult``. Trial checkpoints
    stay in the sweep folder (they can be many and large); children get metrics and plots.
    """
    return _guarded(config, f"the sweep's report is in {summary.folder}", lambda: _log_oracle(config, summary, results))


def _guarded(config: Config, where: str, log) -> str | None:
    try:
        return log()
    except Exception as err:  # any store / network / permission problem
        warnings.warn(
            f"MLflow tracking to {tracking_uri(config)!r} failed: {err!r}; {where}", TrackingWarning, stacklevel=3
        )
        return None


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _connect(config: Config):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(config))
    mlflow.set_experiment(config.tracking.experiment)
    return mlflow


def _log(config: Config, result) -> str:
    mlflow = _connect(config)
    with mlflow.start_run(run_name=config.name) as run:
        _log_into_active_run(mlflow, config, result, log_checkpoint=True)
        return run.info.run_id


def _log_oracle(config: Config, summary, results: list) -> str:
    mlflow = _connect(config)
    with mlflow.start_run(run_name=summary.name, tags={"pat_ray.kind": "oracle"}) as parent:
        mlflow.log_params({k: str(v) for k, v in _flatten(config.model_dump(mode="json")).items()})
        mlflow.log_param("oracle.grid", str(summary.grid))
        found = summary.verdict()
        verdict = found.metrics() if found is not None else {}
        if summary.calibrated:
            verdict["calibrated_tau"] = summary.calibrated["tau"]
        mlflow.log_metrics(verdict)
        for path in sorted(Path(summary.folder).glob("*.png")) + [Path(summary.folder) / "report.md"]:
            if path.is_file():
                mlflow.log_artifact(str(path))
        mlflow.log_text(summary.to_json(), "oracle.json")
        for label, result in results:
            tags = {"pat_ray.kind": "oracle_trial", "policy": result.config.start.kind, "trial": label}
            with mlflow.start_run(run_name=label, nested=True, tags=tags):
                _log_into_active_run(mlflow, result.config, result, log_checkpoint=False)
        return parent.info.run_id


def _log_into_active_run(mlflow, config: Config, result, log_checkpoint: bool) -> None:
    from pat_ray.tracking.plots import plot_epi_curve

    mlflow.log_params({k: str(v) for k, v in _flatten(config.model_dump(mode="json")).items()})
    for record in result.history:
        metrics = {
            k: float(v)
            for k, v in record.to_dict().items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "epoch"
        }
        mlflow.log_metrics(metrics, step=record.epoch)
    mlflow.log_metrics(
        {
            "final_accuracy": result.final_accuracy,
            "final_flops_kept": result.flops_kept,
            "final_train_flops_ratio": result.train_flops_ratio,
            "final_wall_seconds": result.wall_seconds,
            "final_trigger_epoch": -1 if result.trigger_epoch is None else result.trigger_epoch,
        }
    )
    mlflow.log_text(config_to_yaml(config), "config.yaml")
    snapshots = [{"epoch": r.epoch, "counts": r.snapshot_counts, "fingerprint": r.fingerprint} for r in result.history]
    mlflow.log_text(json.dumps({"snapshots": snapshots, "final": result.architecture}), "architecture.json")
    with tempfile.TemporaryDirectory() as folder:
        tau = config.start.tau if isinstance(config.start, EPIStart) else None
        mlflow.log_artifact(
            str(plot_epi_curve(result.history, Path(folder) / "epi_curve.png", tau, result.trigger_epoch))
        )
    if log_checkpoint and result.checkpoint is not None and Path(result.checkpoint).is_file():
        mlflow.log_artifact(str(result.checkpoint), artifact_path="checkpoint")
