"""``pat_ray.lightning.PaTCallback`` with a real ``lightning.Trainer`` on CPU: one device, and DDP
on two processes; Lightning's own checkpoints keep the pruned widths and resume from them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")
SCRIPT = Path(__file__).with_name("_lightning_script.py")


def fit(tmp_path, devices: int) -> list[list[str]]:
    ran = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), str(devices)], capture_output=True, text=True, timeout=600
    )
    assert ran.returncode == 0, ran.stderr[-4000:]
    results = [line.split()[1:] for line in ran.stdout.splitlines() if line.startswith("RESULT ")]
    assert results, f"no rank printed its RESULT line:\n{ran.stdout[-3000:]}\n{ran.stderr[-3000:]}"
    return results


def test_one_device_prunes_saves_the_pruned_widths_and_resumes_from_them(tmp_path):
    first, resumed = fit(tmp_path, 1)
    rank, fingerprint, pruned, width = first
    assert pruned == "True" and int(width) < 16
    saved = torch.load(tmp_path / "epoch=2-step=24.ckpt", weights_only=False)
    assert saved["state_dict"]["body.0.weight"].shape[0] < 16  # Lightning saved the small module
    assert saved["callbacks"]["PaTCallback"]["architecture"]["kept"]
    assert resumed == [rank, fingerprint, "True", width]  # the fresh dense module came back pruned


def test_ddp_on_two_processes_agrees_on_one_architecture(tmp_path):
    ranks = sorted(fit(tmp_path, 2))
    assert [r[0] for r in ranks] == ["0", "1"]
    assert ranks[0][1:] == ranks[1][1:] and ranks[0][2] == "True"
