"""SIGTERM (schedulers, `kill`, container stops) and SIGHUP (a closed terminal) stop a run as
Ctrl-C does: the last finished epoch's checkpoint is kept, one line says how to resume, the exit
code is 128 + the signal, and the resumed run has every epoch once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_ends_a_local_run_cleanly_and_it_resumes(stop, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        f"output_dir: {tmp_path / 'runs'}\ntraining: {{epochs: 4}}\nstart: {{kind: fixed, epoch: 1}}\n"
        "tracking: {mlflow: false}\n"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = subprocess.Popen(
        [sys.executable, "-m", "pat_ray.cli", "run", str(config), "--local"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    seen = []
    for line in run.stdout:  # type: ignore[union-attr]
        seen.append(line)
        if line.startswith("epoch   2"):
            run.send_signal(stop)
            break
    out = "".join(seen) + run.communicate(timeout=60)[0]
    assert run.returncode == 128 + stop, out
    assert f"error: stopped by {stop.name}; a run continues from its last finished epoch" in out
    assert "Traceback" not in out
    folder = tmp_path / "runs" / "digits"
    assert [r["epoch"] for r in json.loads((folder / "history.json").read_text())][:2] == [1, 2]
    resumed = subprocess.run(
        [sys.executable, "-m", "pat_ray.cli", "run", str(config), "--local", "--resume"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert [r["epoch"] for r in json.loads((folder / "history.json").read_text())] == [1, 2, 3, 4]
