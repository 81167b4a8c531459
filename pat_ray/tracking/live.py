"""A run tracked in MLflow while it trains: the driver opens (or, on ``--resume``, reopens) the
MLflow run and logs the config; every epoch's metrics are logged as they are reported, by the
driver's side of the run (this process for ``--local``; on Ray, Train's controller, which runs on
the driver's node, from what rank 0 reported), so a worker never needs to reach the store; the
driver closes the run with the final numbers and artifacts.

The run id lives in ``<run folder>/mlflow_run.json``, so a resumed run continues the same
MLflow run. Epochs that run again after a resume (those after the last checkpoint) are not
logged twice: a step already in the store is skipped. The first failure to reach the store
is one warning; the run then goes on without tracking.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pat_ray.config import Config
from pat_ray.storage import Location
from pat_ray.tracking.mlflow_log import (
    active_parent,
    client_for,
    create_run,
    forget_failures,
    guarded,
    log_epochs,
    log_result,
    mlflow_calls,
    store_failed,
    tracking_uri,
)
from pat_ray.training.reporters import WrappingReporter

if TYPE_CHECKING:
    from pat_ray.training.records import RunResult
    from pat_ray.training.reporters import Reporter

RUN_FILE = "mlflow_run.json"
PROGRESS_METRIC = "val_acc"  # logged every epoch: its last step is the last epoch logged


@dataclass(frozen=True)
class LiveTarget:
    """Where a process logs the run's epochs: plain data, so Ray can hand it to a worker."""

    tracking_uri: str
    run_id: str
    timeout_s: float = 5.0  # per request to the store


def open_run(
    config: Config, run_dir: Path | Location, resume: bool, overrides: Sequence[str] = ()
) -> LiveTarget | None:
    """The MLflow run this run logs into: the one ``run_dir`` recorded when resuming (and it
    still exists in the same store), else a new one; None, with a warning, when the store
    cannot be reached."""
    uri = tracking_uri(config)
    forget_failures(uri)  # each run asks a store that failed an earlier run again, once
    tags = {"pat_ray.kind": "run", **({"pat_ray.overrides": " ".join(overrides)} if overrides else {})}
    timeout = config.tracking.timeout_s
    return guarded(uri, "the run goes on untracked", lambda: _open(uri, config, run_dir, resume, tags), timeout)


def _open(uri: str, config: Config, run_dir: Path | Location, resume: bool, tags: dict[str, str]) -> LiveTarget:
    client = client_for(uri)
    folder = Location.of(run_dir)
    recorded = _recorded(folder / RUN_FILE) if resume else None
    if recorded is not None and recorded.tracking_uri == uri and _exists(client, recorded.run_id):
        client.update_run(recorded.run_id, status="RUNNING")
        return LiveTarget(uri, recorded.run_id, config.tracking.timeout_s)
    run_id = create_run(client, config, config.name, tags=tags, parent=active_parent(uri))
    target = LiveTarget(uri, run_id, config.tracking.timeout_s)
    (folder / RUN_FILE).write_text(json.dumps(asdict(target)))
    return target


def _recorded(path: Location) -> LiveTarget | None:
    try:
        return LiveTarget(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # no record, or not ours: a new MLflow run


def _exists(client: Any, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True


class EpochLogger:
    """Logs each epoch record into the run; after one failure it warns once and stops."""

    def __init__(self, target: LiveTarget) -> None:
        self.target = target
        self.client: Any = None
        self.last_step = 0
        self.failed = False

    def log(self, record: dict[str, Any]) -> None:
        if self.failed:
            return
        try:
            with mlflow_calls(self.target.timeout_s):
                if self.client is None:
                    self.client = client_for(self.target.tracking_uri)
                    history = self.client.get_metric_history(self.target.run_id, PROGRESS_METRIC)
                    self.last_step = max((m.step for m in history), default=0)
                if record["epoch"] > self.last_step:
                    log_epochs(self.client, self.target.run_id, [record])
                    self.last_step = record["epoch"]
        except Exception as err:
            self.failed = True
            store_failed(self.target.tracking_uri, f"{err!r}; training goes on untracked")


class TrackingReporter(WrappingReporter):
    """A reporter that also logs each epoch to MLflow, around the reporter it wraps."""

    def __init__(self, inner: Reporter, target: LiveTarget) -> None:
        super().__init__(inner)
        self.logger = EpochLogger(target)

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        self.inner.report(metrics, checkpoint)
        self.logger.log(metrics)


def close_run(target: LiveTarget, config: Config, result: RunResult) -> str | None:
    """Log the finished run's summary and artifacts and mark it finished; its id, or None."""

    def close() -> str:
        client = client_for(target.tracking_uri)
        log_result(client, target.run_id, config, result, checkpoint=True)
        client.set_terminated(target.run_id, status="FINISHED")
        return target.run_id

    return guarded(target.tracking_uri, f"the run's results are in {result.checkpoint}", close, target.timeout_s)


def abandon_run(target: LiveTarget, interrupted: bool) -> None:
    """Mark the run KILLED (Ctrl-C: ``--resume`` continues it) or FAILED."""
    status = "KILLED" if interrupted else "FAILED"
    guarded(
        target.tracking_uri,
        "",
        lambda: client_for(target.tracking_uri).set_terminated(target.run_id, status),
        target.timeout_s,
    )
