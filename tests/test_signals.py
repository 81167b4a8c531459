"""SIGTERM (schedulers, `kill`, container stops) and SIGHUP (a closed terminal) stop a run as
Ctrl-C does: the last finished epoch's checkpoint is kept, one line says how to resume, the exit
code is 128 + the signal, and the resumed run has every epoch once."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from _helpers import start_cli, stop_after_epoch


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_ends_a_local_run_cleanly_and_it_resumes(stop, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        f"output_dir: {tmp_path / 'runs'}\ntraining: {{epochs: 4}}\nstart: {{kind: fixed, epoch: 1}}\n"
        "tracking: {mlflow: false}\n"
    )
    run = start_cli("run", str(config), "--local")
    out = stop_after_epoch(run, 2, stop)
    assert run.returncode == 128 + stop, out
    hint = re.search(rf"error: stopped by {stop.name}; to continue it from its last finished epoch: (.+)$", out, re.M)
    assert hint, out
    assert "Traceback" not in out
    folder = tmp_path / "runs" / "digits" / "latest"
    assert [r["epoch"] for r in json.loads((folder / "history.json").read_text())][:2] == [1, 2]
    pasted = shlex.split(hint.group(1))  # the hint, pasted as it is, from another folder
    assert pasted[:2] == ["pat-ray", "run"]
    resumed = subprocess.run(
        [sys.executable, "-m", "pat_ray.cli", *pasted[1:]], capture_output=True, text=True, timeout=300, cwd="/"
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [r["epoch"] for r in json.loads((folder / "history.json").read_text())] == [1, 2, 3, 4]


def _ray_processes() -> set[str]:
    """The live processes of any Ray on this machine (its servers, agents and workers), as
    ``pid command``: named so by Ray, or running from Ray's package."""
    found = set()
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:  # gone meanwhile
            continue
        if proc.name.isdigit() and ("ray::" in command or "/ray/" in command or "raylet" in command):
            found.add(f"{proc.name} {command[:80]}")
    return found


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_ctrl_c_on_a_one_worker_ray_run_stops_it_and_the_ray_it_started(stop, tmp_path):
    """The default run (one Ray worker, one task) on a Ray it started: Ctrl-C (or SIGTERM, which
    must not read as Ctrl-C though it lands inside a blocking Ray call) keeps the last finished
    epoch, says how to resume, and leaves none of that Ray's processes behind."""
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path / 'runs'}\ntraining: {{epochs: 4}}\ntracking: {{mlflow: false}}\n")
    before = _ray_processes()  # the suite's own Ray's, if it has one
    ray_tmp = tempfile.mkdtemp(prefix="prs", dir="/tmp")  # short: Ray's socket paths are limited
    try:
        run = start_cli("run", str(config), env={"RAY_TMPDIR": ray_tmp, "RAY_ADDRESS": ""})
        out = stop_after_epoch(run, 2, stop)
        assert run.returncode == 128 + stop, out
        what = "interrupted" if stop == signal.SIGINT else "stopped by SIGTERM"
        assert f"error: {what}; to continue it from its last finished epoch: pat-ray run --resume" in out, out
        assert "Traceback" not in out, out
        deadline = time.time() + 20
        while (_ray_processes() - before) and time.time() < deadline:
            time.sleep(0.5)
        assert _ray_processes() - before == set()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    history = json.loads((tmp_path / "runs" / "digits" / "latest" / "history.json").read_text())
    assert [r["epoch"] for r in history][:2] == [1, 2]
