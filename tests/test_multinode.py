"""pat_ray across Ray nodes, as a cluster user meets it: Ray's own multi-node test cluster on one
machine (``ray.cluster_utils.Cluster``: a head and two worker nodes, each its own raylet, one
CPU each), a real MLflow tracking server and a real S3 API server on loopback. Every driver is a
``pat-ray`` process of its own (as ``ray job submit`` would start it), pointed at the cluster
with ``RAY_ADDRESS``; every process of the cluster sees an unreachable ``MLFLOW_TRACKING_URI``,
so a metric that arrives came through the driver's side."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray")

from _helpers import configured  # noqa: E402
from pat_ray.config import FixedStart  # noqa: E402
from pat_ray.run_folder.versions import find_version  # noqa: E402
from pat_ray.storage import Location  # noqa: E402

pytestmark = pytest.mark.slow  # a multi-node test cluster: `pytest -m slow` (README)

HERE = Path(__file__).parent
UNREACHABLE = "http://127.0.0.1:9/"
PLUGIN = """
import pat_ray
from pat_ray.core.criterion import Criterion, filter_norms, normalize_per_group


class ShippedL1(Criterion):
    def scores(self, model, graph):
        return normalize_per_group({g.name: filter_norms(model, g, 1, False) for g in graph.prunable})


@pat_ray.hookimpl
def pat_ray_register_criteria(register):
    register("shipped_l1", ShippedL1)
"""
USER_MODEL = """
from torch import nn


class Net(nn.Sequential):
    \"\"\"The user's own CNN, in a package only the driver's machine has.\"\"\"

    def __init__(self, num_classes, in_channels, width=16):
        super().__init__(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
        )
"""


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    os.environ["MLFLOW_TRACKING_URI"] = UNREACHABLE  # inherited by every raylet, and so every worker
    os.environ.pop("RAY_ADDRESS", None)
    with socket.socket() as probe:  # the dashboard's usual port may be another Ray's on this machine
        probe.bind(("127.0.0.1", 0))
        dashboard_port = probe.getsockname()[1]
    # a killed node is declared dead after 3 missed health checks a second apart (Ray's default:
    # 5, 3 s apart): the lost-node tests wait for that, nothing else about the cluster changes
    health = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 1, "dashboard_port": dashboard_port, "_system_config": health},
    )
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    yield cluster
    cluster.shutdown()


def driver(cluster, tmp_path: Path, args: list[str], tracking: str = UNREACHABLE, **popen) -> subprocess.Popen:
    """``pat-ray ARGS`` in its own process against the cluster, with the shipped plugin registered
    from a file that is gone before the run starts, and the user's model package (``user_nets``,
    trusted) deleted as soon as Ray has started."""
    plugin = tmp_path / "plugin_src" / "shipped_l1_plugin.py"
    plugin.parent.mkdir(exist_ok=True)
    plugin.write_text(PLUGIN)
    package = tmp_path / "user_src" / "user_nets"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(USER_MODEL)
    env = {
        **os.environ,
        "RAY_ADDRESS": cluster.address,
        "MLFLOW_TRACKING_URI": tracking,
        # the driver, the user's code, then this pytest's own path (a worktree's pat_ray, when pytest runs there)
        "PYTHONPATH": os.pathsep.join([str(HERE), str(package.parent), os.environ.get("PYTHONPATH", "")]),
        "USER_CODE": str(package),
        "PYTHONUNBUFFERED": "1",
    }
    if args[0] in ("run", "oracle"):
        args = [args[0], "--trust", "user_nets", *args[1:]]
    env.pop("PAT_RAY_VERBOSE", None)
    command = [sys.executable, str(HERE / "_multinode_driver.py"), str(plugin), *args]
    process = subprocess.Popen(command, env=env, cwd=tmp_path, text=True, **popen)
    STARTED.append(process)
    return process


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_driver_outlives_its_test():
    """A failed test never leaves a driver holding the cluster's CPUs for the next one."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def finished(process: subprocess.Popen, timeout: float = 400) -> tuple[int, str]:
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out or ""


def pipeline(tmp_path: Path, name: str, **overrides) -> Path:
    """A short 2-worker digits config using the shipped plugin's criterion and the user's own model
    (``user_nets:Net``, by import path), written to a file."""
    settings = {
        "name": name,
        "output_dir": tmp_path / "runs",
        "training": {"epochs": 3},
        "start": FixedStart(epoch=1),
        "pruning": {"interval": 5},  # the three steps take 18 of the last two epochs' 24 iterations per rank
        "scaling": {"num_workers": 2, "cpus_per_worker": 1},
    }
    for key, value in overrides.items():
        settings[key] = {**settings[key], **value} if isinstance(settings.get(key), dict) else value
    config = configured(**settings).model_dump(mode="json")  # validated with a built-in criterion
    config["pruning"]["criterion"] = {"name": "shipped_l1", "params": {}}
    config["model"] = {"name": None, "target": "user_nets:Net", "params": {"width": 12}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def ranks(run_folder: Location) -> list[dict]:
    return [json.loads(line) for line in (run_folder / "ranks.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(cluster, mlflow_server, s3_server, tmp_path_factory):
    """One 2-worker run on the cluster: its folder in S3, tracked on the MLflow server."""
    tmp_path = tmp_path_factory.mktemp("reference")
    output = s3_server("multinode")
    config = pipeline(tmp_path, "spread", output_dir=output, tracking={"tracking_uri": mlflow_server})
    code, out = finished(
        driver(cluster, tmp_path, ["run", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    )
    assert code == 0, out[-4000:]
    return find_version(Location.of(output) / "spread"), out


def test_two_workers_on_two_nodes_ship_the_plugin_and_the_users_model_and_track_through_the_driver(
    reference, mlflow_server
):
    import mlflow

    folder, out = reference
    reports = ranks(folder)
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    for report in reports:  # each epoch, the two ranks ran on two different raylets
        assert len({rank["node_id"] for rank in report["ranks"]}) == 2
    history = json.loads((folder / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3] and history[-1]["flops_kept"] == pytest.approx(0.5, abs=0.02)
    assert "shipped_l1" in (folder / "config.yaml").read_text()  # the deleted plugin's criterion did the ranking
    # the user's model, its package deleted from the driver once Ray started: the workers built it from py_modules
    assert "target: user_nets:Net" in (folder / "config.yaml").read_text()
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    run_id = json.loads((folder / "mlflow_run.json").read_text())["run_id"]
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [1, 2, 3]  # every epoch, once
    assert client.get_run(run_id).info.status == "FINISHED"
    assert "Traceback" not in out


def test_an_oracle_sweep_runs_on_the_cluster_with_its_report_in_s3(cluster, s3_server, tmp_path):
    output = s3_server("multinode-oracle")
    config = pipeline(
        tmp_path,
        "sweep",
        output_dir=output,
        tracking={"mlflow": False},
        scaling={"num_workers": 1},
        training={"epochs": 3},
        oracle={"start_epochs": [1], "policies": ["never"], "max_concurrent_trials": 2},
    )
    code, out = finished(
        driver(
            cluster,
            tmp_path,
            ["oracle", str(config), "--name", "grid"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    )
    assert code == 0, out[-4000:]
    sweep = find_version(Location.of(output) / "oracle" / "grid")
    summary = json.loads((sweep / "oracle.json").read_text())
    assert sorted(t["label"] for t in summary["trials"]) == ["fixed-1", "never"]
    assert all(t.get("error") is None for t in summary["trials"])
    assert "fixed-1" in (sweep / "report.md").read_text() and (sweep / "accuracy_vs_start.png").is_file()


def _a_worker_node_in_use(cluster, run_folder: Path, timeout: float = 240):
    """A (non-head) cluster node running one of the run's ranks, once the run has reported an epoch."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run_folder / "ranks.jsonl").is_file():
            used = {rank["node_id"] for rank in ranks(Location.of(run_folder))[-1]["ranks"]}
            return next(node for node in cluster.worker_nodes if node.node_id in used)
        time.sleep(0.5)
    raise AssertionError("the run reported no epoch")


def test_a_lost_node_with_a_replacement_ends_like_an_undisturbed_run(cluster, reference, tmp_path):
    config = pipeline(tmp_path, "lost", tracking={"mlflow": False})
    run = driver(cluster, tmp_path, ["run", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    folder = tmp_path / "runs" / "lost" / "latest"
    try:
        cluster.remove_node(_a_worker_node_in_use(cluster, folder), allow_graceful=False)  # the third node is free
        code, out = finished(run)
    finally:
        cluster.add_node(num_cpus=1)  # back to three nodes for the next tests
    assert code == 0, out[-4000:]
    history = json.loads((folder / "history.json").read_text())
    undisturbed = json.loads((reference[0] / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]  # every epoch exactly once
    assert [(r["triggered"], r["val_acc"], r["fingerprint"]) for r in history] == [
        (r["triggered"], r["val_acc"], r["fingerprint"]) for r in undisturbed
    ]


def test_a_lost_node_without_a_replacement_ends_after_the_wait_with_one_line(cluster, tmp_path):
    config = pipeline(tmp_path, "stranded", tracking={"mlflow": False}, scaling={"resource_wait_s": 10})
    run = driver(cluster, tmp_path, ["run", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    folder = tmp_path / "runs" / "stranded" / "latest"
    lost = list(cluster.worker_nodes)
    try:
        _a_worker_node_in_use(cluster, folder)
        for node in lost:  # only the head's one CPU is left for two workers
            cluster.remove_node(node, allow_graceful=False)
        code, out = finished(run)
    finally:
        for _ in lost:
            cluster.add_node(num_cpus=1)
    print(out)  # the console a user sees (pytest -rP shows it)
    assert code == 1, out[-4000:]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "waited 10 s" in errors[0], out[-3000:]
    assert f"pat-ray run --resume {folder.resolve()}" in errors[0], out[-3000:]  # a command that works, pasted
    assert "Traceback" not in out and (folder / "last.pt").is_file()  # the last finished epoch is kept
    # with the nodes back, --resume restarts the Ray Train run by name and finishes it
    code, out = finished(
        driver(cluster, tmp_path, ["run", str(config), "--resume"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    )
    assert code == 0, out[-3000:]
    assert [r["epoch"] for r in json.loads((folder / "history.json").read_text())] == [1, 2, 3]


def test_ctrl_c_while_waiting_for_resources_stops_within_seconds(cluster, tmp_path):
    """SIGTERM and SIGHUP take the same handler (test_signals.py sends each to a local run)."""
    stop = signal.SIGINT
    config = pipeline(tmp_path, "waiting", tracking={"mlflow": False}, scaling={"num_workers": 5})
    run = driver(cluster, tmp_path, ["run", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(15)  # Ray is up and Train waits for five CPUs on a three-CPU cluster
    assert run.poll() is None
    sent = time.time()
    run.send_signal(stop)
    code, out = finished(run, timeout=60)
    assert time.time() - sent < 15
    # no epoch had finished: the hint says there is nothing to resume instead of a command that would fail
    assert code == 128 + stop and "nothing to resume" in out and "Traceback" not in out, out[-3000:]


def test_a_data_root_missing_on_the_workers_fails_at_once_naming_node_and_path(cluster, tmp_path):
    config = pipeline(tmp_path, "nodata", tracking={"mlflow": False}, data={"params": {}})
    data = yaml.safe_load(config.read_text())
    data["data"] = {"name": "fashion_mnist", "params": {"root": str(tmp_path / "staged" / "fmnist")}}
    config.write_text(yaml.safe_dump(data))
    started = time.time()
    code, out = finished(
        driver(cluster, tmp_path, ["run", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    )
    assert code == 1, out[-3000:]
    assert "warning: data.params:" in out and "each Ray worker checks its own" in out  # the driver only warns
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(tmp_path / "staged" / "fmnist") in errors[0] and "on node" in errors[0]
    assert "Traceback" not in out and time.time() - started < 120
