"""EPI's per-epoch overhead: one snapshot (scores + global selection + EPI) against an epoch.

A snapshot's cost does not depend on the dataset, an epoch's grows with it, so both are
measured on the dense model and the share is extrapolated per image: epoch seconds = images
per epoch x (seconds per training step / batch). A gradient criterion (Taylor) also observes
every iteration; that cost is counted per iteration. Training steps use --batch images at the
model's native input size; the snapshot is the engine's own (``Pruner.snapshot`` +
``SnapshotTracker.record`` over a full window). Medians of --repeats.

A budget in step time (``measure: latency``) prices every candidate of the selection's
bisection with the latency table instead of counting FLOPs, and the run times its layers
once before training: both are measured for the magnitude criterion, the one-time cost as a
share of one extrapolated epoch.

    python benchmarks/epi_overhead.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _report import header, write
from pat_ray.core.cost.probe import measure_latency
from pat_ray.core.cost.timing import seconds_of
from pat_ray.core.selection import Budget
from pat_ray.plugins.registry import get_registry
from pat_ray.training.collective import LocalCollective
from pat_ray.training.pruner import Pruner
from pat_ray.training.snapshots import SnapshotTracker

CPU = torch.device("cpu")
SETTINGS = {  # model -> (input size, classes, images per epoch of its usual dataset)
    "cifar_resnet56": (32, 10, 50_000),
    "resnet50": (224, 1000, 1_281_167),
}


def measure(name: str, batch: int, repeats: int, criterion: str, budget: str = "flops") -> dict:
    registry = get_registry()
    size, classes, epoch_images = SETTINGS[name]
    torch.manual_seed(0)
    model = registry.create("model", name, num_classes=classes)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, classes, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    step_s = statistics.median(seconds_of(step, CPU) for _ in range(repeats))
    example = torch.zeros(1, 3, size, size)
    started = time.perf_counter()  # the table's one-off measurement, itself many timings
    table = measure_latency(model, example, batch) if budget == "latency" else None
    table_s = time.perf_counter() - started if table else 0.0
    pruner = Pruner(
        model,
        example,
        criterion=registry.create("criterion", criterion),
        surgery=registry.create("surgery", "native"),
        budget=Budget(0.5, budget),
        steps=3,
        interval=10,
        exclude=[],
        collective=LocalCollective(),
        latency=table,
    )
    tracker = SnapshotTracker(registry.create("similarity", "structural"), window=5, schedule_snapshots=90)
    gradient_criterion = pruner.criterion.needs_gradients  # observes every iteration, not only per snapshot
    observe_s = (
        statistics.median(seconds_of(lambda: pruner.observe(model), CPU) for _ in range(repeats))
        if gradient_criterion
        else 0.0
    )

    def snapshot():
        if gradient_criterion:
            pruner.observe(model)  # the evidence a real epoch would have gathered
        tracker.record(pruner.snapshot(model)[0])

    for _ in range(5):  # a full window, so every timed record compares with 5 snapshots
        snapshot()
    snapshot_s = statistics.median(seconds_of(snapshot, CPU) for _ in range(repeats))
    iterations = epoch_images / batch
    epoch_s = iterations * step_s
    overhead_s = snapshot_s + iterations * observe_s
    return {
        "step_s": step_s,
        "snapshot_s": snapshot_s,
        "observe_s": observe_s,
        "epoch_s": epoch_s,
        "overhead_s": overhead_s,
        "table_s": table_s,
        "images": epoch_images,
        "size": size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--criteria", nargs="+", default=["magnitude", "taylor"])
    args = parser.parse_args()
    rows = []
    for name in SETTINGS:
        for criterion, budget in [*((c, "flops") for c in args.criteria), ("magnitude", "latency")]:
            m = measure(name, args.batch, args.repeats, criterion, budget)
            once = f"{m['table_s']:.1f} s = {100 * m['table_s'] / m['epoch_s']:.2f}%" if m["table_s"] else "-"
            quarter = m["overhead_s"] + 3 * m["snapshot_s"]  # start.snapshot_every: 0.25
            rows.append(
                f"| {name} ({m['size']}px) | {criterion} | {budget} | {m['snapshot_s'] * 1000:.1f} "
                f"| {m['observe_s'] * 1000:.2f} | {m['step_s'] * 1000:.0f} | {m['images']:,} "
                f"| {m['epoch_s'] / 60:.1f} | {100 * m['overhead_s'] / m['epoch_s']:.3f}% "
                f"| {100 * quarter / m['epoch_s']:.3f}% | {once} |"
            )
            print(rows[-1], flush=True)
    lines = header(
        "EPI overhead per epoch",
        torch.device("cpu"),
        f"Training step: batch {args.batch}, SGD, fp32; epoch = images per epoch x step time / batch "
        f"(CIFAR-10: 50,000; ImageNet: 1,281,167); snapshot = criterion scores + selection at 50% of the budget's "
        f"measure + EPI over a window of 5; medians of {args.repeats}. latency: the run's one-time layer timing "
        "(batch as the step, 6 widths per axis, 3 shuffled rounds of a median of 3) against one epoch.",
    )
    lines += [
        "| model | criterion | budget | snapshot ms | observe ms / iteration | train step ms | images / epoch "
        "| epoch min (extrapolated) | overhead (snapshot + observes) / epoch | the same at 4 snapshots / epoch "
        "| once per run: layer timing / one epoch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    write("epi_overhead.md", lines)


if __name__ == "__main__":
    main()
