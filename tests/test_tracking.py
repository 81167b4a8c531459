"""MLflow tracking: the run's params, per-epoch metrics and artifacts, and clean failure."""

from __future__ import annotations

import pytest

import pat_ray
from _helpers import configured
from pat_ray.config import Config, FixedStart
from pat_ray.tracking.mlflow_log import TrackingWarning

mlflow = pytest.importorskip("mlflow")


def tracked(tmp_path, uri: str) -> Config:
    return configured(
        output_dir=tmp_path / "runs",
        start=FixedStart(epoch=1),
        training={"epochs": 2},
        tracking={"mlflow": True, "tracking_uri": uri, "experiment": "t"},
    )


def test_run_is_logged_with_metrics_and_artifacts(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = pat_ray.run(tracked(tmp_path, uri), local=True, quiet=True)
    assert result.mlflow_run_id
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.data.params["start.kind"] == "fixed"
    assert run.data.metrics["final_accuracy"] == pytest.approx(result.final_accuracy)
    history = client.get_metric_history(result.mlflow_run_id, "val_acc")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id)}
    assert {"config.yaml", "architecture.json", "epi_curve.png", "checkpoint"} <= artifacts
    png = client.download_artifacts(result.mlflow_run_id, "epi_curve.png", str(tmp_path))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_tracking_failure_warns_and_keeps_the_result(tmp_path):
    (tmp_path / "blocker").write_text("a file where the store's folder would have to be")
    bad = f"sqlite:///{tmp_path / 'blocker' / 'mlflow.db'}"
    with pytest.warns(TrackingWarning, match="MLflow tracking to .* failed"):
        result = pat_ray.run(tracked(tmp_path, bad), local=True, quiet=True)
    assert result.mlflow_run_id is None
    assert result.checkpoint.is_file() and result.trigger_epoch == 1
