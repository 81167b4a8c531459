"""What one reported checkpoint costs the driver's side of a Ray run, before and after the
checkpoint-traffic change: bytes written per epoch and the per-report work in Train's
controller, for a small checkpoint (the digits ResNet-20) and a large one (ResNet-50 with SGD
momentum, ImageNet-sized).

    python benchmarks/report_traffic.py

Before (pat_ray at b9ea242): the worker copied ``last.pt`` into a temp folder for
``ray.train.report`` (Ray then persisted that copy), and the controller callback read the
persisted file, wrote it to the run folder, then loaded it whole (``torch.load``) to rewrite
``history.json``. After: the worker hard-links ``last.pt`` into the folder Ray persists, and the
callback copies the persisted file to the run folder once and writes ``history.json`` from the
epoch records the workers reported. Both procedures are run here on the same files (median of
5). Writes benchmarks/results/report_traffic.md.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from _report import header, write
from pat_ray.models.cifar_resnet import CifarResNet
from pat_ray.storage import Location, atomic_write

REPEATS = 5


def checkpoint(model: torch.nn.Module, epochs: int) -> dict:
    """A run checkpoint's bulk: weights, SGD momentum of the same size, the history."""
    state = model.state_dict()
    record = {"epoch": 1, "val_acc": 0.9, "snapshot_counts": list(range(40)), "fingerprint": "0" * 16}
    return {
        "state_dict": state,
        "extra": {"optimizer": {k: v.clone() for k, v in state.items()}, "history": [record] * epochs},
    }


def before(persisted: Path, run: Path, history: list[dict]) -> None:
    data = persisted.read_bytes()
    atomic_write(run / "last.pt", lambda h: h.write(data), backup=run / "previous.pt")
    loaded = torch.load(run / "last.pt", weights_only=True)  # the full load, for the history
    (run / "history.json").write_text(json.dumps(loaded["extra"]["history"]))


def after(persisted: Path, run: Path, history: list[dict]) -> None:
    folder = Location.of(run)
    (folder / "last.pt").copy_from(Location.of(persisted), backup=folder / "previous.pt")
    (folder / "history.json").write_text(json.dumps(history))


def median_seconds(step, persisted: Path, run: Path, history: list[dict]) -> float:
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        step(persisted, run, history)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    rows = [
        "| checkpoint | size MB | bytes written per epoch, before | after | driver-side work per report, before s "
        "| after s | after / before |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    models = {"digits ResNet-20": CifarResNet(20, 10, 1), "ResNet-50 (ImageNet)": torchvision.models.resnet50()}
    with tempfile.TemporaryDirectory(prefix="pat_ray_traffic_") as scratch:
        for label, model in models.items():
            persisted = Path(scratch) / label.replace(" ", "_") / "last.pt"
            persisted.parent.mkdir()
            torch.save(checkpoint(model, epochs=30), persisted)
            size = persisted.stat().st_size
            history = torch.load(persisted, weights_only=True)["extra"]["history"]
            seconds = {}
            for name, step in (("before", before), ("after", after)):
                run = Path(scratch) / f"{name}-{label.replace(' ', '_')}"
                run.mkdir()
                seconds[name] = median_seconds(step, persisted, run, history)
                shutil.rmtree(run)
            rows.append(
                f"| {label} | {size / 2**20:.1f} | {4 * size / 2**20:.1f} MB (4 copies) | {3 * size / 2**20:.1f} MB "
                f"(3 copies) | {seconds['before']:.3f} | {seconds['after']:.3f} | "
                f"{seconds['after'] / seconds['before']:.2f} |"
            )
    notes = (
        f"{os.cpu_count()} CPUs, local disk. Bytes written per epoch count every write of `last.pt` on the way "
        "from the engine to the run folder (engine, report copy, Ray's persisted copy, run folder) and leave out "
        "`previous.pt` (a rename). The driver-side work is what Train's controller did per reported checkpoint."
    )
    write("report_traffic.md", [*header("Checkpoint traffic per Ray report", torch.device("cpu"), notes), *rows])


if __name__ == "__main__":
    main()
