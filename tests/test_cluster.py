"""Cluster use as a user does it: the launcher config against Ray's schema, `ray job submit`
against a real local head, and the ImageNet pipelines through `pat-ray validate`."""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pat_ray.cli import main

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "ray_cluster.yaml"


def _validate(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_config_passes_rays_schema_and_the_schema_bites():
    import jsonschema

    config = yaml.safe_load(CLUSTER.read_text())
    _validate(config)
    config["available_node_types"]["head"]["bogus"] = 1
    with pytest.raises(jsonschema.ValidationError, match="bogus"):
        _validate(config)


def test_cluster_config_keeps_control_ports_private_and_token_auth_on():
    config = yaml.safe_load(CLUSTER.read_text())
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]  # SSH only, never 8265 / 6379 / 5000
    assert all(ip["CidrIp"] != "0.0.0.0/0" for r in rules for ip in r["IpRanges"])
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in cmd for cmd in starts if "ray start" in cmd)
    installs = " ".join(config["setup_commands"])
    for dist in ("~/pat_ray", "plugins/pat-ray-example-criterion", "plugins/pat-ray-torch-pruning"):
        assert dist in installs
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # the token is not in the repo


def test_no_committed_file_holds_a_secret():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    pattern = re.compile(r"AKIA[0-9A-Z]{16}|aws_secret_access_key\s*[:=]\s*\S+|MLFLOW_TRACKING_PASSWORD\s*[:=]\s*\S+")
    suspicious = [
        name
        for name in tracked.split()
        if (ROOT / name).is_file()
        and name.endswith((".yaml", ".yml", ".toml", ".py", ".md", ".cfg", ".env", ".json"))
        and pattern.search((ROOT / name).read_text(errors="ignore"))
    ]
    assert suspicious == []


@pytest.mark.parametrize("name", ["imagenet_resnet50", "imagenet_resnet34", "imagenet_mobilenet_v2"])
def test_imagenet_pipelines_validate(name, tmp_path, monkeypatch):
    """Validated before ``ray job submit`` (``RAY_ADDRESS`` set): the images are on the cluster's
    shared filesystem, not on this machine, so the checks that need them are left to the workers."""
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    monkeypatch.setenv("PAT_RAY_SHARED", str(tmp_path))
    result = CliRunner().invoke(main, ["validate", str(ROOT / "pipelines" / f"{name}.yaml")])
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output.split("\n", 1)[1])
    assert resolved["data"]["params"]["root"] == str(tmp_path / "imagenet")
    assert resolved["output_dir"] == str(tmp_path / "runs")
    assert resolved["scaling"] == {
        "num_workers": 8,
        "use_gpu": True,
        "max_failures": 3,
        "cpus_per_worker": None,
        "resource_wait_s": 300.0,
    }
    monkeypatch.delenv("PAT_RAY_SHARED")
    unset = CliRunner().invoke(main, ["validate", str(ROOT / "pipelines" / f"{name}.yaml")])
    assert unset.exit_code == 2 and "environment variable that is not set" in unset.output


@pytest.mark.parametrize("include_gitignore", [True, False])
def test_working_dir_upload_leaves_out_results_stores_and_virtualenvs(include_gitignore):
    """What `ray job submit --working-dir .` skips, asked of Ray's own ignore-file reader
    (`.rayignore` alone suffices, even when a user tells Ray to disregard `.gitignore`)."""
    from ray._private.runtime_env.packaging import get_excludes_from_ignore_files

    excludes = get_excludes_from_ignore_files(ROOT, include_gitignore=include_gitignore)

    def skipped(relative: str) -> bool:
        return any(exclude(ROOT / relative) for exclude in excludes)

    for path in ("runs/digits/last.pt", "mlflow.db", "mlruns/0/meta.yaml", ".venv/bin/python", "ray_results/x",
                 "data/cifar10/batch"):  # fmt: skip
        assert skipped(path), path
    for path in ("pipelines/digits.yaml", "pat_ray/engine.py", "plugins/pat-ray-torch-pruning/pyproject.toml"):
        assert not skipped(path), path


def _wait_for(url: str, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {seconds} s")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow  # a Ray head of its own and a submitted job: `pytest -m slow`
def test_ray_job_submit_runs_the_default_pipeline_on_a_local_head():
    """The README's `ray job submit ... -- pat-ray run CONFIG` (with overrides, to keep it short),
    against `ray start --head` on 127.0.0.1 (auth disabled on both sides, as on a laptop); then a
    plain `pat-ray run` joins that running head instead of starting a Ray of its own. The head is
    stopped by signalling its own `ray start --block`."""
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.pop("RAY_ADDRESS", None)
    # short: Unix socket paths are limited; RAY_TMPDIR makes it where a bare ray.init() looks for a running head
    env["RAY_TMPDIR"] = f"/tmp/prh_{uuid.uuid4().hex[:6]}"
    temp_dir = f"{env['RAY_TMPDIR']}/ray"
    gcs_port, dashboard_port = _free_port(), _free_port()  # the README's 8265 may be another Ray's here
    head = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=2", f"--temp-dir={temp_dir}",
         f"--dashboard-agent-listen-port={_free_port()}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    try:
        _wait_for(f"{dashboard}/api/version", 90)
        job = subprocess.run(
            [str(bin_dir / "ray"), "job", "submit", "--address", dashboard, "--working-dir", ".",
             "--", "pat-ray", "run", "pipelines/digits.yaml", "training.epochs=4", "start={kind: fixed, epoch: 2}"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=420,
        )  # fmt: skip
        output = job.stdout + job.stderr
        assert job.returncode == 0, output[-3000:]
        assert re.search(r"pruning started:\s+fixed start at epoch 2\n", output), output[-3000:]
        kept = float(re.search(r"FLOPs kept:\s+([0-9.]+)", output).group(1))
        assert kept == pytest.approx(0.5, abs=0.015)
        assert "succeeded" in output
        joined = subprocess.run(  # EPI on 4 epochs: the worker warns that it cannot fire before its latest start
            ["pat-ray", "run", "pipelines/digits.yaml", "training.epochs=4",
             "tracking.mlflow=false", "--output-dir", str(Path(temp_dir).parent / "runs")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=420,
        )  # fmt: skip
        output = joined.stdout + joined.stderr
        assert joined.returncode == 0, output[-3000:]
        assert re.search(rf"Ray: joined the running local cluster at [0-9.]+:{gcs_port}\b", output), output[-3000:]
        # the worker's warning reads as --local shows it: one line, no source line under it
        assert re.search(r"^warning: start: EPI needs 6 snapshots", output, re.M), output[-3000:]
        assert "PlanWarning" not in output, output[-3000:]
        assert "did not exit within" not in output, output[-3000:]  # Train's helpers found the cluster
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
