"""Ray Train tier: 2 CPU workers on one shared local Ray; unique run names and tmp storage."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from _helpers import configured, fail_once_after  # noqa: E402
from pat_ray.config import Config, EPIStart, FixedStart  # noqa: E402
from pat_ray.run_folder import RunFolder  # noqa: E402
from pat_ray.storage import Location  # noqa: E402


def two_workers(tmp_path, epochs=4, start_epoch=2) -> Config:
    return configured(
        output_dir=tmp_path / "runs",
        start=FixedStart(epoch=start_epoch),
        training={"epochs": epochs},
        pruning={"interval": 5},  # 3 steps in 18 of a rank's 12 iterations per epoch: a start at epoch 2 of 4 fits
        scaling={"num_workers": 2},
    )


def one_worker(tmp_path, epochs=3, **overrides) -> Config:
    """The default pipeline on one Ray worker (one task), short, untracked unless ``overrides`` say."""
    base = configured(
        output_dir=tmp_path / "runs", training={"epochs": epochs}, pruning={"interval": 5}, tracking={"mlflow": False}
    )
    return configured(base, **overrides)


def ray_mlflow_client(uri):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def rank_logs(run_folder):
    """Per rank, what it reported each epoch (from the run folder's ranks.jsonl)."""
    logs = {}
    for line in (run_folder / "ranks.jsonl").read_text().splitlines():
        report = json.loads(line)
        for rank in report["ranks"]:
            logs.setdefault(f"rank{rank['rank']}", []).append({"epoch": report["epoch"], **rank})
    return logs


def test_two_workers_agree_on_the_architecture(local_ray, tmp_path):
    from pat_ray.distributed.train import run_on_ray
    from pat_ray.tracking.live import close_run, open_run

    name, uri = f"agree-{uuid.uuid4().hex[:8]}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    # EPI starting mid-epoch: at the second of four snapshots of epoch 1 (12 steps a rank)
    mid_epoch = EPIStart(window=1, patience=0, tau=0.0, snapshot_every=0.25)
    config = configured(two_workers(tmp_path), tracking={"tracking_uri": uri}, start=mid_epoch)
    folder = RunFolder(Location.of(tmp_path / "runs" / config.name / "v1"))
    tracked = open_run(config, folder.location, resume=False)
    result = run_on_ray(
        config, storage=Location.of(tmp_path / "storage"), run_name=name, tracking=tracked, run_folder=folder
    )
    assert result.trigger_epoch == 1 and result.trigger_position == pytest.approx(0.5, abs=0.05)
    assert [h.epoch for h in result.history] == [1, 2, 3, 4]
    assert abs(result.flops_kept - 0.5) < 0.015
    logs = rank_logs(folder.location.local_path)
    assert set(logs) == {"rank0", "rank1"}
    for epoch in range(4):
        assert logs["rank0"][epoch]["fingerprint"] == logs["rank1"][epoch]["fingerprint"]
    triggers = {rank: [m["epoch"] for m in lines if m["triggered"]] for rank, lines in logs.items()}
    assert triggers == {"rank0": [1], "rank1": [1]}
    assert all(line["gossip_bytes"] > 0 for lines in logs.values() for line in lines)

    # rank 0 (only: each step once) logged every epoch into the MLflow run the driver opened
    client = ray_mlflow_client(uri)
    assert [m.step for m in client.get_metric_history(tracked.run_id, "flops_kept")] == [1, 2, 3, 4]
    run_id = close_run(tracked, config, result)
    assert run_id == tracked.run_id and client.get_run(run_id).info.status == "FINISHED"
    assert {"epi_curve.png", "architecture.json", "config.yaml", "checkpoint"} <= {
        a.path for a in client.list_artifacts(run_id)
    }

    # a fresh process loads the final checkpoint and reproduces the reported accuracy
    script = (
        "import sys, torch; from pat_ray import load_checkpoint; from pat_ray.plugins.registry import get_registry;"
        "m, _ = load_checkpoint(sys.argv[1]); m.eval(); d = get_registry().create('dataset', 'digits');"
        "x = torch.stack([a for a, _ in d.val]); y = torch.tensor([b for _, b in d.val]);"
        "print((m(x).argmax(1) == y).float().mean().item())"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(result.checkpoint)], capture_output=True, text=True, check=True
    )
    assert float(out.stdout.strip()) == pytest.approx(result.final_accuracy, abs=1e-6)


def test_a_worker_fault_after_pruning_resumes_from_the_checkpoint(plugins, local_ray, tmp_path):
    """With a budget in step time, so that it also shows: rank 0 times the layers once, every
    rank prices with that table, and the restarted group reuses the one in the checkpoint."""
    from pat_ray.distributed.train import run_on_ray
    from pat_ray.training.checkpoint import read_checkpoint

    base = two_workers(tmp_path)
    config = configured(base, pruning={"budget": {"measure": "latency", "fraction": 0.75, "latency_grid": 3}})
    name, marker = f"fault-{uuid.uuid4().hex[:8]}", tmp_path / "fault-done"
    plugins(fail_once_after(3, marker), name="fail-once")  # shipped to both workers
    result = run_on_ray(config, storage=Location.of(tmp_path / "storage"), run_name=name)
    assert marker.exists()
    assert [h.epoch for h in result.history] == [1, 2, 3, 4]
    assert result.trigger_epoch == 2
    assert result.history[-1].time_kept == pytest.approx(0.75, abs=0.03)
    logs = rank_logs(tmp_path / "runs" / config.name / "latest")
    # both ranks reported epoch 3 before one failed, then the restarted group went on from epoch 4
    assert [m["epoch"] for m in logs["rank0"]] == [1, 2, 3, 4]
    per_epoch = {rank: {m["epoch"]: m["fingerprint"] for m in lines} for rank, lines in logs.items()}
    assert per_epoch["rank0"] == per_epoch["rank1"]
    # epoch 3's checkpoint (before the fault) and epoch 4's (after) price with one table:
    # a table timed again would differ in every entry
    tables = {
        json.dumps(read_checkpoint(path).extra["latency_table"], sort_keys=True)
        for path in (tmp_path / "storage" / name).rglob("last.pt")
    }
    assert len(tables) == 1 and None not in tables
    assert (tmp_path / "runs" / config.name / "latest" / "latency_table.json").is_file()


def test_a_local_run_cut_after_two_epochs_resumes_on_ray_with_every_epoch_once(plugins, local_ray, tmp_path):
    import pat_ray
    from pat_ray.training.checkpoint import read_checkpoint

    class StopAfterTwo:
        @pat_ray.hookimpl
        def pat_ray_on_epoch_end(self, epoch, metrics):
            if epoch == 2:
                raise KeyboardInterrupt

    config = two_workers(tmp_path, epochs=4, start_epoch=1)
    config = configured(config, scaling={"num_workers": 1})
    plugins(StopAfterTwo(), name="stop-after-two")
    with pytest.raises(KeyboardInterrupt):
        pat_ray.run(config, local=True, quiet=True)
    last = tmp_path / "runs" / "digits" / "latest" / "last.pt"
    assert read_checkpoint(last).extra["epoch"] == 2
    result = pat_ray.run(config, resume=True)  # on Ray Train, from the local run's last.pt
    assert [h.epoch for h in result.history] == [1, 2, 3, 4] and result.trigger_epoch == 1
    assert read_checkpoint(last).extra["epoch"] == 4  # the Ray run's checkpoints land in the same folder


def test_one_ray_worker_trains_like_local(local_ray, tmp_path):
    """Same config and seed, same numbers: each epoch's batches depend on (seed, epoch) only,
    and a worker gets the threads --local uses (the fixture's Ray has 2 CPUs, so 2 threads).
    (Two two-worker runs agreeing with each other: tests/test_multinode.py's lost-node test.)"""
    from ray.util.state import list_actors, list_tasks

    import pat_ray

    config = configured(
        output_dir=tmp_path / "runs",
        training={"epochs": 3},
        pruning={"interval": 5},  # the 3 steps fit the last epoch
        start=FixedStart(epoch=2),
        tracking={"mlflow": False},
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        local = pat_ray.run(configured(config, name="local"), local=True, quiet=True)
    finally:
        torch.set_num_threads(threads)
    before = {actor.actor_id for actor in list_actors(limit=10_000)}
    on_ray = pat_ray.run(configured(config, name="onray"))
    started = sorted(actor.class_name for actor in list_actors(limit=10_000) if actor.actor_id not in before)
    # one task, no Train controller, worker group or helper actors: one worker has no peers
    assert started == [], started
    assert len(list_tasks(filters=[("name", "=", "pat_ray[onray]")], limit=100)) == 1  # its state lags: not asserted
    assert on_ray.trigger_epoch == local.trigger_epoch is not None
    for name in ("history.json", "config.yaml", "last.pt"):  # a Ray run leaves what a local run leaves
        assert (tmp_path / "runs" / "onray" / "latest" / name).is_file(), name
    ray_history = json.loads((tmp_path / "runs" / "onray" / "latest" / "history.json").read_text())
    assert [r["val_acc"] for r in ray_history] == [h.val_acc for h in local.history]
    assert [(h.train_loss, h.val_acc, h.fingerprint) for h in on_ray.history] == [
        (h.train_loss, h.val_acc, h.fingerprint) for h in local.history
    ]


def test_one_ray_worker_logs_each_epoch_to_mlflow_from_the_driver(local_ray, tmp_path):
    import pat_ray

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = one_worker(tmp_path, start=FixedStart(epoch=1), tracking={"mlflow": True, "tracking_uri": uri})
    result = pat_ray.run(config)
    client = ray_mlflow_client(uri)
    assert [m.step for m in client.get_metric_history(result.mlflow_run_id, "val_acc")] == [1, 2, 3]
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["val_acc"] == pytest.approx(result.final_accuracy)


def _own_loop(settings: dict) -> None:
    """A ``train_loop_per_worker`` of the user's own, with ``pat_ray.PaT`` in it."""
    import ray.train
    import ray.train.torch
    import torch.nn.functional as F
    from torch import nn

    import pat_ray

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 12, 3), nn.BatchNorm2d(12), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(12, 3))  # fmt: skip
    model = ray.train.torch.prepare_model(net)  # DDP on the worker group
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rank = ray.train.get_context().get_world_rank()
    generator = torch.Generator().manual_seed(rank)  # each worker its own batches
    batches = [(torch.randn(8, 1, 8, 8, generator=generator), torch.randint(0, 3, (8,), generator=generator))] * 6
    start = {"kind": "fixed", "epoch": 1}
    pat = pat_ray.PaT(
        model, torch.zeros(1, 1, 8, 8), optimizer, epochs=settings["epochs"], start=start, steps=2, interval=2
    )
    for _ in range(settings["epochs"]):
        for images, labels in batches:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model = pat.step(model)
        model = pat.end_epoch(model)
    seen = {"fingerprint": pat.architecture.fingerprint(), "pruned": pat.pruned, "kept": pat.flops_kept}
    (Path(settings["out"]) / f"rank{rank}.json").write_text(json.dumps(seen))  # one machine: one filesystem
    ray.train.report(seen)


def test_the_component_in_a_users_ray_train_loop_agrees_across_workers(local_ray, tmp_path):
    from ray import cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # the loop is defined in this test module, which Ray's workers cannot import: shipped by value,
    # as a loop in a user's script (__main__) is
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    trainer = TorchTrainer(
        _own_loop,
        train_loop_config={"epochs": 3, "out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name=f"own-loop-{uuid.uuid4().hex[:8]}", storage_path=str(tmp_path)),
    )
    try:
        trainer.fit()
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    seen = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert seen[0] == seen[1] and seen[0]["pruned"] and seen[0]["kept"] <= 0.5 + 0.005


MODULE_PLUGIN = """
import pat_ray
from pat_ray.plugins.builtin.criteria.magnitude import Magnitude


class LateL1(Magnitude):
    pass


@pat_ray.hookimpl
def pat_ray_register_criteria(register):
    register("late_l1", LateL1)
"""


def test_a_plugin_module_registered_after_ray_started_reaches_the_workers(plugins, local_ray, tmp_path, monkeypatch):
    """Ray was started before the plugin existed, so the job's py_modules lack it: the Train run's
    own runtime environment ships the copy made at registration (the file itself is gone)."""
    import importlib

    from pat_ray.distributed.train import run_on_ray

    source = tmp_path / "late_plugin_src" / "late_l1_plugin.py"
    source.parent.mkdir()
    source.write_text(MODULE_PLUGIN)
    monkeypatch.syspath_prepend(str(source.parent))
    plugins(importlib.import_module("late_l1_plugin"), name="late-l1")
    source.unlink()
    config = configured(two_workers(tmp_path, epochs=3, start_epoch=1), pruning={"criterion": {"name": "late_l1"}})
    result = run_on_ray(config, storage=Location.of(tmp_path / "storage"), run_name=f"late-{uuid.uuid4().hex[:8]}")
    assert [h.epoch for h in result.history] == [1, 2, 3] and result.trigger_epoch == 1


def test_what_a_worker_finds_wrong_with_the_config_is_raised_as_a_local_run_raises_it(local_ray, tmp_path):
    """A model that does not fit the data fails in the workers' setup; the driver raises that
    ValueError, one line as ``--local`` shows it, not Train's error with the worker's traceback."""
    import pat_ray

    config = configured(
        output_dir=tmp_path / "runs",
        model={"name": "vit_small_images", "params": {"image_size": 32}},  # the digits are 8x8
        training={"epochs": 3},
        pruning={"interval": 5},
        scaling={"max_failures": 0},
        tracking={"mlflow": False},
    )
    with pytest.raises(ValueError) as caught:
        pat_ray.run(config)
    assert type(caught.value) is ValueError, type(caught.value)
    assert str(caught.value).startswith("model 'vit_small_images' does not run on one sample of the data (1, 1, 8, 8)")


@pytest.mark.parametrize("allowed, said", [(1, "1"), (-1, "-1, no limit")])
def test_one_ray_worker_that_fails_starts_again_from_the_last_checkpoint(
    allowed, said, plugins, local_ray, tmp_path, capsys
):
    """A one-worker run is one Ray task: when it fails, the driver starts it again from the run
    folder's last checkpoint (as Train restarts a worker group), each epoch recorded once."""
    import pat_ray

    marker = tmp_path / "fault-done"
    plugins(fail_once_after(2, marker), name="fail-once")  # shipped to the task
    config = one_worker(tmp_path, epochs=4, start=FixedStart(epoch=2), scaling={"max_failures": allowed})
    result = pat_ray.run(config)
    assert marker.exists()
    assert [h.epoch for h in result.history] == [1, 2, 3, 4] and result.trigger_epoch == 2
    history = json.loads((tmp_path / "runs" / config.name / "latest" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    out = capsys.readouterr().out
    assert "note: the worker failed (injected fault after epoch 2" in out
    assert f"(failure 1 of scaling.max_failures={said})" in out


def test_one_ray_worker_that_fails_more_often_than_allowed_ends_the_run(plugins, local_ray, tmp_path):
    import pat_ray

    marker = tmp_path / "fault-done"
    plugins(fail_once_after(1, marker), name="fail-once")
    config = one_worker(tmp_path, scaling={"max_failures": 0})
    with pytest.raises(RuntimeError, match="injected fault after epoch 1"):
        pat_ray.run(config)
    assert marker.exists()


def test_one_ray_worker_whose_loss_diverges_ends_at_once(local_ray, tmp_path, capsys):
    """A restart would replay the same batches from the same checkpoint: the run ends with the
    error --local shows, without starting the worker again."""
    import pat_ray
    from pat_ray.errors import TrainingDivergedError

    config = one_worker(tmp_path, training={"optimizer": {"lr": 1e12}}, scaling={"max_failures": 2})
    with pytest.raises(TrainingDivergedError, match="the loss became NaN or infinite in epoch 1"):
        pat_ray.run(config)
    assert "note: the worker failed" not in capsys.readouterr().out


def test_one_ray_worker_waits_for_resources_the_cluster_lacks_then_says_so(local_ray, tmp_path, capsys):
    import pat_ray
    from pat_ray.distributed.one_worker import WAIT_NOTE_S
    from pat_ray.errors import RayRunError

    wait_s = WAIT_NOTE_S + 2
    config = configured(
        output_dir=tmp_path / "runs",
        tracking={"mlflow": False},
        scaling={"cpus_per_worker": 64, "resource_wait_s": wait_s},  # the fixture's Ray has 2 CPUs
    )
    waited = rf"waited {wait_s:g} s \(scaling.resource_wait_s\) for 1 worker \(64 CPU each\)"
    with pytest.raises(RayRunError, match=waited):
        pat_ray.run(config)
    said = f"note: the worker has not started yet (it needs 64 CPU); waiting at most {wait_s:g} s"
    assert said in capsys.readouterr().out


def test_two_workers_end_at_the_first_failure_that_a_restart_cannot_mend(local_ray, tmp_path):
    """A model that does not fit the data fails every worker's setup the same way each time: the
    run ends at once with the error ``--local`` shows, instead of restarting the worker group
    ``max_failures`` times first (each restart starts its worker processes anew)."""
    import os

    from torch import nn

    import pat_ray

    calls = tmp_path / "calls"

    def too_wide(num_classes: int) -> nn.Module:  # no import path: Ray pickles it to the workers by value
        with calls.open("a") as log:
            log.write(f"{os.getpid()}\n")
        return nn.Sequential(nn.Flatten(), nn.Linear(100, num_classes))  # a digit is 64 numbers

    config = configured(
        output_dir=tmp_path / "runs",
        training={"epochs": 3},
        pruning={"interval": 5},
        tracking={"mlflow": False},
        scaling={"num_workers": 2, "max_failures": 2},
    )
    with pytest.raises(ValueError) as caught:
        pat_ray.run(config, model=too_wide)
    assert type(caught.value) is ValueError and "does not run on one sample of the data" in str(caught.value)
    workers = {int(pid) for pid in calls.read_text().split()} - {os.getpid()}
    assert len(workers) == 2, workers  # one worker group, not three
