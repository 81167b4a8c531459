"""MLflow tracking: on by default, live while the run trains, continued by a resumed run;
params, per-epoch metrics and artifacts; a store that fails is a warning, never a lost run."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

import pat_ray
from _helpers import configured, without_pat_ray
from pat_ray.config import Config, FixedStart
from pat_ray.tracking import live
from pat_ray.tracking.mlflow_log import TrackingWarning

mlflow = pytest.importorskip("mlflow")


@contextlib.contextmanager
def mlflow_store(uri: str):
    """MLflow's fluent calls (artifact downloads by model URI) against ``uri`` for the block."""
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)


def tracked(tmp_path, uri: str, epochs: int = 3) -> Config:
    return configured(
        output_dir=tmp_path / "runs",
        start=FixedStart(epoch=1),
        training={"epochs": epochs},
        tracking={"tracking_uri": uri, "experiment": "t"},  # mlflow: on by default
    )


class StoreReader:
    """An observer that reads the MLflow store from inside the run, after an epoch."""

    def __init__(self, uri: str, run_dir, epoch: int, interrupt: bool = False) -> None:
        self.uri, self.run_dir, self.epoch, self.interrupt = uri, run_dir, epoch, interrupt
        self.seen: tuple[str, list[int]] | None = None

    @pat_ray.hookimpl
    def pat_ray_on_epoch_end(self, epoch, metrics):
        if epoch != self.epoch:
            return
        run_id = json.loads((self.run_dir / live.RUN_FILE).read_text())["run_id"]
        client = mlflow.MlflowClient(tracking_uri=self.uri)
        steps = [m.step for m in client.get_metric_history(run_id, "val_acc")]
        self.seen = (client.get_run(run_id).info.status, steps)
        if self.interrupt:
            self.interrupt = False  # once: the resumed run runs this epoch again
            raise KeyboardInterrupt


def test_run_is_logged_with_metrics_and_artifacts(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = pat_ray.run(tracked(tmp_path, uri), local=True, quiet=True)
    assert result.mlflow_run_id
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.data.params["start.kind"] == "fixed"
    assert run.data.metrics["final_accuracy"] == pytest.approx(result.final_accuracy)
    history = client.get_metric_history(result.mlflow_run_id, "val_acc")
    assert [m.step for m in history] == [1, 2, 3]
    artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id)}
    assert {"config.yaml", "architecture.json", "epi_curve.png", "checkpoint"} <= artifacts
    # the pruned model as an MLflow logged model of the run: loads with mlflow.pytorch where pat_ray is not installed
    (logged,) = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{result.mlflow_run_id}'"
    )
    with mlflow_store(uri):
        model_dir = mlflow.artifacts.download_artifacts(f"models:/{logged.model_id}", dst_path=str(tmp_path / "dl"))
    pruned, ckpt = pat_ray.load_checkpoint(result.checkpoint)
    batch = torch.randn(3, *ckpt.input_shape[1:])
    torch.save(batch, tmp_path / "batch.pt")
    script = (
        "import mlflow.pytorch, torch\n"
        f"model = mlflow.pytorch.load_model({model_dir!r})\n"
        "torch.save(model(torch.load('batch.pt')), 'out.pt')\n"
    )
    loaded = without_pat_ray(script, tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    with torch.no_grad():
        expected = pruned.eval()(batch)
    assert torch.allclose(torch.load(tmp_path / "out.pt", weights_only=True), expected, atol=1e-5, rtol=0)
    png = client.download_artifacts(result.mlflow_run_id, "epi_curve.png", str(tmp_path))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_tracking_failure_warns_and_keeps_the_result(tmp_path):
    (tmp_path / "blocker").write_text("a file where the store's folder would have to be")
    bad = f"sqlite:///{tmp_path / 'blocker' / 'mlflow.db'}"
    with pytest.warns(TrackingWarning, match="MLflow tracking to .* failed"):
        result = pat_ray.run(tracked(tmp_path, bad), local=True, quiet=True)
    assert result.mlflow_run_id is None
    assert result.checkpoint.is_file() and result.trigger_epoch == 1


def test_metrics_are_in_the_store_while_the_run_is_still_going(plugins, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tracked(tmp_path, uri, epochs=3)
    reader = StoreReader(uri, tmp_path / "runs" / config.name / "latest", epoch=2)
    plugins(reader, name="store-reader")
    result = pat_ray.run(config, local=True, quiet=True)
    assert reader.seen == ("RUNNING", [1, 2])  # mid-run: the epochs so far, the run still open
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert [m.step for m in client.get_metric_history(result.mlflow_run_id, "val_acc")] == [1, 2, 3]
    assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"


def test_a_resumed_run_continues_its_mlflow_run_with_each_epoch_once(plugins, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = configured(tracked(tmp_path, uri, epochs=4), training={"checkpoint_every": 2})
    run_dir = tmp_path / "runs" / config.name / "latest"
    plugins(StoreReader(uri, run_dir, epoch=3, interrupt=True), name="cut-after-3")
    with pytest.raises(KeyboardInterrupt):
        pat_ray.run(config, local=True, quiet=True)
    first = json.loads((run_dir / live.RUN_FILE).read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert client.get_run(first).info.status == "KILLED"
    result = pat_ray.run(config, local=True, quiet=True, resume=True)  # from epoch 2's checkpoint: epoch 3 again
    assert result.mlflow_run_id == first
    assert [m.step for m in client.get_metric_history(first, "val_acc")] == [1, 2, 3, 4]
    assert client.get_run(first).info.status == "FINISHED"
    assert len(client.search_runs([client.get_experiment_by_name("t").experiment_id])) == 1


def test_a_store_that_fails_mid_run_is_one_warning_and_the_run_finishes(tmp_path, monkeypatch):
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(live, "log_epochs", failing)
    with pytest.warns(TrackingWarning, match="went away.*goes on untracked") as caught:
        result = pat_ray.run(tracked(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", epochs=3), local=True, quiet=True)
    assert len(calls) == 1 and len([w for w in caught if w.category is TrackingWarning]) == 1
    # the store that failed is not asked again, not even for the summary: one failure, one cost
    assert [h.epoch for h in result.history] == [1, 2, 3] and result.mlflow_run_id is None


def test_a_server_that_never_answers_costs_one_timeout_and_one_warning(tmp_path):
    """A tracking server that accepts connections and never answers (a hung host): one request
    waits ``tracking.timeout_s``, then the run goes on untracked and never connects again."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held = []

    def accept_and_hold():
        while True:
            try:
                held.append(listener.accept()[0])  # never answered
            except OSError:
                return

    threading.Thread(target=accept_and_hold, daemon=True).start()
    uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
    config = configured(tracked(tmp_path, uri, epochs=3), tracking={"timeout_s": 1})
    try:
        with pytest.warns(TrackingWarning, match="goes on untracked") as caught:
            result = pat_ray.run(config, local=True, quiet=True)
    finally:
        listener.close()
    assert [h.epoch for h in result.history] == [1, 2, 3] and result.mlflow_run_id is None
    assert len([w for w in caught if w.category is TrackingWarning]) == 1
    assert len(held) == 1  # one connection, one timeout: never asked again


def test_tracking_off_writes_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = configured(tracked(tmp_path, uri), tracking={"mlflow": False})
    result = pat_ray.run(config, local=True, quiet=True)
    assert result.mlflow_run_id is None
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "runs" / config.name / "latest" / live.RUN_FILE).exists()


def test_inside_the_callers_mlflow_run_it_nests_logs_a_registered_model_and_leaves_the_process_as_it_was(
    tmp_path, capfd, monkeypatch
):
    import os

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    uri = f"sqlite:///{tmp_path / 'outer.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        config = configured(
            output_dir=tmp_path / "runs",
            start=FixedStart(epoch=1),
            training={"epochs": 3},
            tracking={"registered_model_name": "digits-small"},  # no tracking_uri: the caller's store
        )
        environment = dict(os.environ)
        with mlflow.start_run() as outer:
            capfd.readouterr()  # what the caller's own MLflow printed (a new store's tables)
            result = pat_ray.run(config, local=True, quiet=True)
            assert mlflow.active_run().info.run_id == outer.info.run_id  # the caller's run is still the active one
        assert dict(os.environ) == environment and mlflow.get_tracking_uri() == uri
        client = mlflow.MlflowClient(tracking_uri=uri)
        run = client.get_run(result.mlflow_run_id)
        assert run.data.tags["mlflow.parentRunId"] == outer.info.run_id
        assert run.info.experiment_id == outer.info.experiment_id
        (logged,) = mlflow.search_logged_models(experiment_ids=[outer.info.experiment_id], output_format="list")
        assert logged.name == "model" and logged.source_run_id == result.mlflow_run_id
        (version,) = client.search_model_versions("name='digits-small'")
        assert version.run_id == result.mlflow_run_id
        model = mlflow.pytorch.load_model(f"models:/{logged.model_id}")
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    finally:
        mlflow.set_tracking_uri(None)
    console = capfd.readouterr()
    for line in ("Successfully registered model", "Created version", "INFO mlflow", "Creating initial MLflow"):
        assert line not in console.out + console.err, line
