"""What the training loop's host reads cost: iterations/s of the default digits pipeline's
dense epochs with the engine's finite-loss check read on the host every 50 iterations (as it
ships) against every iteration (what a per-iteration ``.item()`` costs). On a CPU there is no
queue of device work to wait for, so the two should match; a GPU is where it shows.

    python benchmarks/host_sync.py

Writes benchmarks/results/host_sync.md.
"""

from __future__ import annotations

import statistics

import torch

import pat_ray
from _report import fresh_output_dir, header, write
from pat_ray.config import config_from_dict
from pat_ray.plugins.registry import get_registry
from pat_ray.training import engine

ROUNDS = 3


def iterations_per_second(every: int) -> float:
    """Median over the dense epochs after the first (warm-up) of iterations per second."""
    engine.DIVERGENCE_CHECK_EVERY = every
    config = config_from_dict(
        {
            "output_dir": str(fresh_output_dir()),
            "training": {"epochs": 6},
            "start": {"kind": "never"},
            "tracking": {"mlflow": False},
        }
    )
    result = pat_ray.run(config, local=True, quiet=True)
    data = get_registry().create("dataset", config.data.name, **config.data.params)
    iterations = -(-len(data.train) // config.data.batch_size)
    return iterations / statistics.median(h.epoch_seconds for h in result.history[1:])


def main() -> None:
    runs: dict[int, list[float]] = {50: [], 1: []}
    for _ in range(ROUNDS):  # alternated, so a slow spell hits both settings
        for every in runs:
            runs[every].append(iterations_per_second(every))
    rows = ["| host reads the loss flag | iterations/s (median of runs) | runs |", "|---|---|---|"]
    for every, values in runs.items():
        rows.append(
            f"| every {every} iterations | {statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} |"
        )
    ratio = statistics.median(runs[1]) / statistics.median(runs[50])
    notes = (
        f"Default digits pipeline, dense epochs 2-6 of each run (epoch time includes evaluation), {ROUNDS} "
        f"alternated runs per setting. Every iteration / every 50: {ratio:.3f}x the iterations per second."
    )
    write("host_sync.md", [*header("Host reads in the training loop", torch.device("cpu"), notes), *rows])


if __name__ == "__main__":
    main()
