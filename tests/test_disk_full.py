"""A full disk while a run writes: one line naming the file and the cause, exit 1, the previous
good files intact and no temp file left. On a real small tmpfs, mounted here (root only)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pat_ray.training.checkpoint import read_checkpoint


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs: room for one checkpoint of the digits ResNet-20 (with its optimizer state), not two."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; this test runs where the suite runs as root (CI)")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_naming_the_file_and_the_last_good_checkpoint_survives(small_disk, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        f"output_dir: {small_disk / 'runs'}\ntraining: {{epochs: 4}}\nstart: {{kind: fixed, epoch: 1}}\n"
        "tracking: {mlflow: false}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pat_ray.cli", "run", str(config), "--local"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    folder = (small_disk / "runs" / "digits" / "latest").resolve()
    assert errors == [f"error: No space left on device ({folder / 'last.pt'})"], done.stderr
    assert "Traceback" not in done.stderr
    assert read_checkpoint(folder / "last.pt").extra["epoch"] >= 1  # the earlier checkpoint is whole
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".last.pt.")]  # no temp file left
