"""The README's set-up block works top to bottom as written: its install lines are what CI
installs, and its `pat-ray` lines run in a fresh folder, the Ray run with our lines only."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from pat_ray.config import Config

ROOT = Path(__file__).parents[1]
RAY_CHATTER = (
    "Reporting training result",
    "Attempting to start training worker group",
    "Setting up process group",
    "PreemptionWatcher",  # a C++ error line of Train's preemption watcher
    "Traceback",  # e.g. Train's placement-group cleaner when another Ray runs on the machine
)


def setup_block() -> list[str]:
    """The shell lines of the first ``bash`` block under "## Set up"."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Set up") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README: no bash block under '## Set up'"
    return [line for line in block.group(1).splitlines() if line.strip()]


def _installed(line: str) -> list[str]:
    words = shlex.split(line.split("#")[0])
    return [words[i + 1] for i, word in enumerate(words) if word == "-e"]


def test_the_install_lines_are_what_ci_installs():
    lines = setup_block()
    assert lines[0].startswith("python3 -m venv .venv")
    ci = (ROOT / ".ci" / "run").read_text()
    (ci_install,) = [line for line in ci.splitlines() if "pip install" in line and not line.startswith("#")]
    assert _installed(lines[1]) == _installed(ci_install) != []
    assert "\npytest\n" in ci and "```bash\npytest\n```" in (ROOT / "README.md").read_text()


def test_the_set_up_block_runs_top_to_bottom_in_a_fresh_folder(tmp_path):
    commands = [line for line in setup_block() if line.startswith("pat-ray ")]
    assert [shlex.split(c.split("#")[0])[:2] for c in commands[:2]] == [["pat-ray", "run"]] * 2
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for key in ("PAT_RAY_VERBOSE", "RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    outputs = []
    for command in commands:
        done = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        outputs.append(done.stdout + done.stderr)
        assert done.returncode == 0, f"{command}\n{outputs[-1][-3000:]}"
    on_ray, local = outputs[0], outputs[1]
    for output in (on_ray, local):
        assert re.search(r"pruning started:\s+epoch \d+", output) and "mlflow run:" in output
        assert len([line for line in output.splitlines() if line.startswith("epoch ")]) == Config().training.epochs
        for label in ("final accuracy:", "FLOPs kept:", "training FLOPs:", "wall time:"):
            assert label in output, label
    assert "embedded default" in local
    for chatter in RAY_CHATTER:
        assert chatter not in on_ray, chatter
    assert "dashboard at" in on_ray
    folders = sorted(p for p in (tmp_path / "runs" / "digits").iterdir() if not p.is_symlink())
    assert len(folders) == 2 and (tmp_path / "runs" / "digits" / "latest").resolve() == folders[-1]
    for folder in folders:
        assert json.loads((folder / "status.json").read_text())["status"] == "finished"
    listing = outputs[2].splitlines()
    assert [line.split()[:2] for line in listing[1:]] == [[f"digits/{f.name}", "finished"] for f in reversed(folders)]
