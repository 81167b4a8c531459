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
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pat_ray.config import Config, config_to_yaml
from pat_ray.config_fields import dotted
from pat_ray.storage import Location
from pat_ray.training.checkpoint import load_checkpoint

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from pat_ray.sweep.plan import OracleSummary
    from pat_ray.training.records import RunResult

T = TypeVar("T")
BATCH = 100  # MLflow's log_batch takes at most 100 params per call


class TrackingWarning(UserWarning):
    """MLflow logging failed; the training result is unaffected."""


def tracking_uri(config: Config) -> str:
    """The store, resolved once on the driver: a relative ``sqlite:///mlflow.db`` names the
    driver's working directory, never a folder on whichever node logs."""
    uri = config.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


_failed_stores: set[str] = set()  # stores that failed once in this process: never asked again


def guarded(uri: str, where: str, log: Callable[[], T]) -> T | None:
    """``log()``, or None and a warning naming the store when any store / network / permission
    problem stops it. A store that failed once is not asked again (None, no second warning), so
    a dead server costs a run one timeout, not one per call."""
    if uri in _failed_stores:
        return None
    try:
        return log()
    except Exception as err:
        store_failed(uri, f"{err!r}; {where}")
        return None


def forget_failures(uri: str) -> None:
    _failed_stores.discard(uri)


def store_failed(uri: str, what: str) -> None:
    _failed_stores.add(uri)
    warnings.warn(f"MLflow tracking to {uri!r} failed: {what}", TrackingWarning, stacklevel=3)


def client_for(uri: str, timeout_s: float) -> MlflowClient:
    """A client whose HTTP requests give up after ``timeout_s`` and are not retried (MLflow's
    defaults, 120 s and 7 retries with backoff, stall a run for minutes on a dead server)."""
    from mlflow import MlflowClient

    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, math.ceil(timeout_s)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    return MlflowClient(tracking_uri=uri)


def create_run(client: MlflowClient, config: Config, name: str, tags: dict[str, str] | None = None) -> str:
    """A new run in the config's experiment (created on first use) with the config as params."""
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.tracking.experiment)
    run_id: str = client.create_run(experiment_id, run_name=name, tags=tags or {}).info.run_id
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
                log_model(client, run_id, local, Path(folder) / MODEL_ARTIFACT)


MODEL_ARTIFACT = "model"


def log_model(client: MlflowClient, run_id: str, checkpoint: Path, scratch: Path) -> None:
    """The pruned model as an MLflow model, ``runs:/<run id>/model``: saved in MLflow's
    ``pt2`` format (torch.export's program, with an input example and signature), so
    ``mlflow.pytorch.load_model`` returns a working module where pat_ray is not installed."""
    import mlflow.pytorch
    import numpy
    import torch
    from mlflow.models import infer_signature

    model, ckpt = load_checkpoint(checkpoint)
    model.eval()
    example = numpy.random.default_rng(0).standard_normal((2, *ckpt.input_shape[1:]), dtype=numpy.float32)
    with torch.no_grad():
        outputs = model(torch.from_numpy(example)).numpy()
    mlflow.pytorch.save_model(
        model,
        str(scratch),
        serialization_format="pt2",
        input_example=example,
        signature=infer_signature(example, outputs),
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}"
        ],  # stated: MLflow's inference runs the model again
    )
    client.log_artifacts(run_id, str(scratch), artifact_path=MODEL_ARTIFACT)


def log_oracle(config: Config, summary: OracleSummary, results: list[tuple[str, RunResult]]) -> str | None:
    """Log an oracle sweep: a parent run with the report, one child run per finished trial.

    ``results`` pairs each finished trial's label with its ``RunResult``. Trial checkpoints
    stay in the sweep folder (they can be many and large); children get metrics and plots.
    """
    uri = tracking_uri(config)
    forget_failures(uri)
    return guarded(
        uri, f"the sweep's report is in {summary.folder}", lambda: _log_oracle(uri, config, summary, results)
    )


def _log_oracle(uri: str, config: Config, summary: OracleSummary, results: list[tuple[str, RunResult]]) -> str:
    from mlflow.entities import Param

    client = client_for(uri, config.tracking.timeout_s)
    parent = create_run(client, config, summary.name, tags={"pat_ray.kind": "oracle"})
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
    for label, result in results:
        tags = {
            "pat_ray.kind": "oracle_trial",
            "policy": result.config.start.kind,
            "trial": label,
            "mlflow.parentRunId": parent,
        }
        child = create_run(client, result.config, label, tags=tags)
        log_epochs(client, child, (record.to_dict() for record in result.history))
        log_result(client, child, result.config, result, checkpoint=False)
        client.set_terminated(child)
    client.set_terminated(parent)
    return parent
