"""SIGTERM (schedulers, `kill`, container stops) and SIGHUP (a closed terminal) stop a run as
Ctrl-C does: the last finished epoch's checkpoint is kept, one line says how to resume, the exit
code is 128 + the signal, and the resumed run has every epoch once."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys

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
