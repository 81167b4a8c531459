"""What every benchmark table starts with: when, on what, with which command."""

from __future__ import annotations

import sys
from datetime import date
from pathlib import Path

import torch
import torchvision

from pat_ray.core.cost.timing import device_name

RESULTS = Path(__file__).parent / "results"


def fresh_output_dir() -> Path:
    """Runs of one benchmark invocation go to a new folder: pat_ray never overwrites a run."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="pat_ray_bench_"))


def header(title: str, device: torch.device, notes: str) -> list[str]:
    command = " ".join(["python", *[Path(sys.argv[0]).as_posix().split("/main/")[-1], *sys.argv[1:]]])
    return [
        f"# {title}",
        "",
        f"{date.today()} · {device_name(device)} · torch {torch.__version__} · torchvision {torchvision.__version__}",
        "",
        f"Command: `{command}`. {notes}",
        "",
    ]


def write(name: str, lines: list[str]) -> Path:
    path = RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return path
