"""How long the command line takes before it does anything: each command below in a fresh
process, median of 5, against ``python -c pass`` (the interpreter's own start, the floor).
Commands that only describe (``--version``, ``--help``, ``runs``, ``config``, ``plugins``)
import neither torch, Ray nor MLflow; ``validate`` builds the config's data and model (it
checks the schedule against the data's length and the model's input channels), so it imports
torch by design and is timed as the contrast.

    python benchmarks/cli_startup.py

Writes benchmarks/results/cli_startup.md.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _report import header, write

ROUNDS = 5
ROOT = Path(__file__).resolve().parents[1]
PAT_RAY = str(Path(sys.executable).with_name("pat-ray"))
COMMANDS = [
    ["--version"],
    ["--help"],
    ["run", "--help"],
    ["oracle", "--help"],
    ["export", "--help"],
    ["runs"],
    ["config", "training"],
    ["config"],
    ["plugins"],
    ["plugins", "--kind", "model"],
    ["validate", f"{ROOT}/pipelines/digits.yaml"],
]


def median_seconds(argv: list[str], folder: str) -> float:
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        subprocess.run(argv, cwd=folder, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    folder = tempfile.mkdtemp(prefix="pat_ray_cli_")
    (Path(folder) / "runs").mkdir()  # `runs` lists an empty folder
    floor = median_seconds([sys.executable, "-c", "pass"], folder)
    rows = []
    for args in COMMANDS:
        seconds = median_seconds([PAT_RAY, *args], folder)
        shown = " ".join(arg.removeprefix(f"{ROOT}/") for arg in args)
        rows.append(f"| `pat-ray {shown}` | {seconds:.2f} | {seconds - floor:.2f} |")
        print(rows[-1], flush=True)
    lines = header(
        "Command-line start-up",
        torch.device("cpu"),
        f"Median of {ROUNDS} fresh processes each; `python -c pass` takes {floor:.2f} s here.",
    )
    lines += ["| command | seconds | over `python -c pass` |", "|---|---|---|", *rows]
    write("cli_startup.md", lines)


if __name__ == "__main__":
    main()
