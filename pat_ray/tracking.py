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
    try:
        return _log(config, result)
    except Exception as err:  # any store / network / permission problem
        warnings.warn(
            f"MLflow tracking to {tracking_uri(config)!r} failed: {err!r}; the run's results "
            f"are in {result.checkpoint}",
            TrackingWarning,
            stacklevel=2,
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


def _log(config: Config, result) -> str:
    import mlflow

    from pat_ray.report import plot_epi_curve

    client_uri = tracking_uri(config)
    mlflow.set_tracking_uri(client_uri)
    mlflow.set_experiment(config.tracking.experiment)
    with mlflow.start_run(run_name=config.name) as run:
        mlflow.log_params({k: str(v) for k, v in _flatten(config.model_dump(mode="json")).items()})
        for record in result.history:
            metrics = {
                k: float(v)
                for k, v in record.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and k != "epoch"
            }
            mlflow.log_metrics(metrics, step=record["epoch"])
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
        snapshots = [
            {"epoch": h["epoch"], "counts": h["snapshot_counts"], "fingerprint": h["fingerprint"]}
            for h in result.history
        ]
        mlflow.log_text(json.dumps({"snapshots": snapshots, "final": result.architecture}), "architecture.json")
        with tempfile.TemporaryDirectory() as folder:
            tau = config.start.tau if isinstance(config.start, EPIStart) else None
            mlflow.log_artifact(
                str(plot_epi_curve(result.history, Path(folder) / "epi_curve.png", tau, result.trigger_epoch))
            )
        if result.checkpoint is not None and Path(result.checkpoint).is_file():
            mlflow.log_artifact(str(result.checkpoint), artifact_path="checkpoint")
        return run.info.run_id
