"""What pat_ray writes to MLflow: a run's params, per-epoch metrics, final numbers and artifacts,
and an oracle sweep as a parent run with one child per trial.

Everything goes through ``MlflowClient`` with explicit run ids (no fluent "active run"), so
the same calls work in the driver and in a Ray worker. Store: the config's
``tracking.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the
working directory. A tracking failure never costs a training result: ``guarded`` turns it
into a ``TrackingWarning``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pat_ray.config import Config, config_to_yaml
from pat_ray.config.fields import dotted
from pat_ray.storage import Location
from pat_ray.tracking.mlflow_private import muted, using_tracking_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from pat_ray.sweep.plan import OracleSummary
    from pat_ray.training.records import RunResult

T = TypeVar("T")
BATCH = 100  # MLflow's log_batch takes at most 100 params per call


class TrackingWarning(UserWarning):
    """MLflow logging failed; the training result is unaffected."""


def tracking_uri(config: Config) -> str:
    """The store, resolved once on the driver: the config's, else the store of the caller's
    active MLflow run (the run then nests under it), else ``MLFLOW_TRACKING_URI``, else
    ``sqlite:///mlflow.db``; a relative ``sqlite:///mlflow.db`` names the driver's working
    directory, never a folder on whichever node logs."""
    active = _active_run()
    caller = _absolute(sys.modules["mlflow"].get_tracking_uri()) if active is not None else None
    uri = config.tracking.tracking_uri or caller or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    return _absolute(uri)


def _absolute(uri: str) -> str:
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def _active_run() -> Any:
    """The caller's active MLflow run (``with mlflow.start_run(): pat_ray.run(...)``), if any;
    MLflow is not imported for the question: without it there is none."""
    mlflow = sys.modules.get("mlflow")
    return mlflow.active_run() if mlflow is not None and hasattr(mlflow, "active_run") else None


def active_parent(uri: str) -> tuple[str, str] | None:
    """``(run id, experiment id)`` of the caller's active MLflow run when it is in the store at
    ``uri``: pat_ray's run is then created as its child, in its experiment."""
    active = _active_run()
    if active is None or _absolute(sys.modules["mlflow"].get_tracking_uri()) != uri:
        return None
    return active.info.run_id, active.info.experiment_id


_failed_stores: set[str] = set()  # stores that failed once in this process: never asked again


def guarded(uri: str, where: str, log: Callable[[], T], timeout_s: float) -> T | None:
    """``log()`` within ``mlflow_calls(timeout_s)``, or None and a warning naming the store when
    any store / network / permission problem stops it. A store that failed once is not asked
    again (None, no second warning), so a dead server costs a run one timeout, not one per call."""
    if uri in _failed_stores:
        return None
    try:
        with mlflow_calls(timeout_s):
            return log()
    except Exception as err:
        store_failed(uri, f"{err!r}; {where}")
        return None


@contextmanager
def mlflow_calls(timeout_s: float) -> Iterator[None]:
    """For the MLflow calls in the block only: each HTTP request gives up after ``timeout_s``
    and is not retried (MLflow's defaults, 120 s and 7 retries with backoff, stall a run for
    minutes on a dead server), and MLflow's INFO lines ("Creating initial MLflow database
    tables...") stay off the console unless ``PAT_RAY_VERBOSE``. The environment variables
    MLflow reads these from, and its loggers, are as they were after the block."""
    limits = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout_s))), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    saved = {name: os.environ.get(name) for name in limits}
    os.environ.update(limits)
    try:
        with nullcontext() if os.environ.get("PAT_RAY_VERBOSE") else muted():
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def forget_failures(uri: str) -> None:
    _failed_stores.discard(uri)


def store_failed(uri: str, what: str) -> None:
    _failed_stores.add(uri)
    warnings.warn(f"MLflow tracking to {uri!r} failed: {what}", TrackingWarning, stacklevel=3)


def client_for(uri: str) -> MlflowClient:
    """A client of the store at ``uri`` (used inside ``mlflow_calls``, which limits its requests)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def create_run(
    client: MlflowClient,
    config: Config,
    name: str,
    tags: dict[str, str] | None = None,
    parent: tuple[str, str] | None = None,
) -> str:
    """A new run with the config as params: in the config's experiment (created on first use),
    or nested under ``parent`` (run id, experiment id) in that run's experiment."""
    tags = dict(tags or {})
    if parent is not None:
        tags["mlflow.parentRunId"], experiment_id = parent
    else:
        experiment = client.get_experiment_by_name(config.tracking.experiment)
        found = experiment.experiment_id if experiment else None
        experiment_id = found or client.create_experiment(config.tracking.experiment)
    run_id: str = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    log_params(client, run_id, config)
    return run_id


def log_params(client: MlflowClient, run_id: str, config: Config) -> None:
    from mlflow.entities import Param

    params = [Param(k, str(v)) for k, v in dotted(config.model_dump(mode="json")).items()]
    for start in range(0, len(params), BATCH):
        client.log_batch(run_id, params=params[start : start + BATCH])


def log_epochs(client: MlflowClient, run_id: str, records: Iterable[dict[str, Any]]) -> None:
    """Each record's numbers as metrics at step ``epoch`` (the epoch record's booleans and
    lists are left to the history and the checkpoint)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), now, record["epoch"])
        for record in records
        for key, value in record.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and key != "epoch"
    ]
    for start in range(0, len(metrics), 1000):  # log_batch's limit for metrics
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def log_result(client: MlflowClient, run_id: str, config: Config, result: RunResult, checkpoint: bool) -> None:
    """The finished run's summary numbers, config, architecture, EPI plot and (optionally) its
    pruned checkpoint."""
    from pat_ray.tracking.plots import plot_epi_curve

    final = {
        "final_accuracy": result.final_accuracy,
        "final_flops_kept": result.flops_kept,
        "final_train_flops_ratio": result.train_flops_ratio,
        "final_wall_seconds": result.wall_seconds,
        "final_trigger_epoch": -1 if result.trigger_epoch is None else result.trigger_epoch,
    }
    log_epochs(client, run_id, [{"epoch": 0, **final}])  # summary numbers: step 0
    client.log_text(run_id, config_to_yaml(config), "config.yaml")
    snapshots = [{"epoch": r.epoch, "counts": r.snapshot_counts, "fingerprint": r.fingerprint} for r in result.history]
    client.log_text(run_id, json.dumps({"snapshots": snapshots, "final": result.architecture}), "architecture.json")
    with tempfile.TemporaryDirectory() as folder:
        plot = plot_epi_curve(
            result.history,
            Path(folder) / "epi_curve.png",
            config.start.threshold,
            result.trigger_position if result.trigger_position is not None else result.trigger_epoch,
        )
        client.log_artifact(run_id, str(plot))
    if checkpoint and result.checkpoint is not None:
        stored = Location.of(result.checkpoint)
        if stored.is_file():
            with tempfile.TemporaryDirectory() as folder:
                local = stored.download(Path(folder) / stored.name)
                client.log_artifact(run_id, str(local), artifact_path="checkpoint")  # for resuming: optimizer state
                log_model(client, run_id, local, config.tracking.registered_model_name)


MODEL_ARTIFACT = "model"


def log_model(client: MlflowClient, run_id: str, checkpoint: Path, registered_name: str | None) -> str:
    """The pruned model as an MLflow logged model of the run (``runs:/<run id>/model``, or
    ``models:/<model id>``), registered as ``registered_name`` when given: MLflow's ``pt2``
    format (torch.export's program, with an input example and signature), so
    ``mlflow.pytorch.load_model`` returns a working module where pat_ray is not installed.
    Returns the model's id."""
    import mlflow.pytorch
    import numpy
    import torch
    from mlflow.models import infer_signature

    from pat_ray.training.checkpoint import load_checkpoint

    model, ckpt = load_checkpoint(checkpoint)
    model.eval()
    example = numpy.random.default_rng(0).standard_normal((2, *ckpt.input_shape[1:]), dtype=numpy.float32)
    with torch.no_grad():
        outputs = model(torch.from_numpy(example)).numpy()
    run = client.get_run(run_id)  # the logged model goes into the run's experiment, whatever is active
    logged = client.create_logged_model(
        run.info.experiment_id, name=MODEL_ARTIFACT, source_run_id=run_id, params=dict(run.data.params)
    )
    with using_tracking_uri(client.tracking_uri):
        info = mlflow.pytorch.log_model(
            model,
            name=MODEL_ARTIFACT,
            run_id=run_id,
            model_id=logged.model_id,
            serialization_format="pt2",
            input_example=example,
            signature=infer_signature(example, outputs),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],  # MLflow's inference runs the model
            registered_model_name=registered_name,
            validate_serving_input=False,  # MLflow would load and run it again; pat_ray ran it just now
        )
    return str(info.model_id)


def log_oracle(config: Config, summary: OracleSummary, results: list[tuple[str, RunResult]]) -> str | None:
    """Log an oracle sweep: a parent run with the report, one child run per finished trial.

    ``results`` pairs each finished trial's label with its ``RunResult``. Trial checkpoints
    stay in the sweep folder (they can be many and large); children get metrics and plots.
    """
    uri = tracking_uri(config)
    forget_failures(uri)
    return guarded(
        uri,
        f"the sweep's report is in {summary.folder}",
        lambda: _log_oracle(uri, config, summary, results),
        config.tracking.timeout_s,
    )


def _log_oracle(uri: str, config: Config, summary: OracleSummary, results: list[tuple[str, RunResult]]) -> str:
    from mlflow.entities import Param

    client = client_for(uri)
    parent = create_run(client, config, summary.name, tags={"pat_ray.kind": "oracle"}, parent=active_parent(uri))
    client.log_batch(parent, params=[Param("oracle.grid", str(summary.grid))])
    found = summary.verdict()
    verdict = found.metrics() if found is not None else {}
    if summary.calibrated:
        verdict["calibrated_tau"] = summary.calibrated["tau"]
    log_epochs(client, parent, [{"epoch": 0, **verdict}])  # summary numbers: step 0
    folder = Path(summary.folder or ".")
    for path in sorted(folder.glob("*.png")) + [folder / "report.md"]:
        if path.is_file():
            client.log_artifact(parent, str(path))
    client.log_text(parent, summary.to_json(), "oracle.json")
    sweep = (parent, client.get_run(parent).info.experiment_id)
    for label, result in results:
        tags = {"pat_ray.kind": "oracle_trial", "policy": result.config.start.kind, "trial": label}
        child = create_run(client, result.config, label, tags=tags, parent=sweep)
        log_epochs(client, child, (record.to_dict() for record in result.history))
        log_result(client, child, result.config, result, checkpoint=False)
        client.set_terminated(child)
    client.set_terminated(parent)
    return parent
