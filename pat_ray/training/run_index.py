"""The runs in an output folder, one line each: what ``pat-ray runs`` lists.

Read from what every run folder holds (``history.json``, ``status.json``, ``mlflow_run.json``,
the lock), never from the checkpoints, so listing a hundred runs is quick.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pat_ray.config import RESERVED_NAMES
from pat_ray.storage import Location
from pat_ray.training.run_lock import is_held
from pat_ray.training.run_state import HISTORY, LAST
from pat_ray.training.run_versions import versions

STATUS = "status.json"  # written when a run ends: finished / failed / interrupted, and its numbers


@dataclass(frozen=True)
class RunEntry:
    name: str  # NAME/VERSION, relative to the listed folder
    status: str  # running, finished, interrupted, failed
    trigger_epoch: int | None
    epochs: int
    final_accuracy: float | None
    flops_kept: float | None
    train_flops_ratio: float | None
    wall_seconds: float | None
    mlflow_run_id: str | None
    modified: float  # seconds since the epoch: the newest file of the run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_runs(output_dir: Path) -> list[RunEntry]:
    """Every run in ``output_dir`` (``NAME/VERSION`` folders, and the ``NAME`` folders of runs
    made before runs had versions), newest first."""
    if not output_dir.is_dir():
        raise FileNotFoundError(f"{output_dir} does not exist: no runs to list")
    entries = [_entry(folder, output_dir) for folder in _run_folders(output_dir)]
    return sorted(entries, key=lambda entry: entry.modified, reverse=True)


def _run_folders(output_dir: Path) -> list[Path]:
    found = []
    for named in sorted(output_dir.iterdir()):
        if named.name in RESERVED_NAMES or named.is_symlink() or not named.is_dir():
            continue
        if _is_run(named):
            found.append(named)
        found += [named / version for version in versions(Location.of(named)) if _is_run(named / version)]
    return found


def _is_run(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).is_file() for name in (HISTORY, LAST, STATUS))


def _entry(folder: Path, output_dir: Path) -> RunEntry:
    history = _json(folder / "history.json") or []
    ended = _json(folder / STATUS) or {}
    last = history[-1] if history else {}
    trigger = next((r.get("epoch") for r in history if r.get("triggered")), None)
    files = [p for p in folder.iterdir() if p.is_file()]
    status = "running" if is_held(folder) else ended.get("status", "interrupted")
    return RunEntry(
        name=folder.relative_to(output_dir).as_posix(),
        status=status,
        trigger_epoch=ended.get("trigger_epoch", trigger),
        epochs=len(history),
        final_accuracy=ended.get("final_accuracy", last.get("val_acc")),
        flops_kept=ended.get("flops_kept", last.get("flops_kept")),
        train_flops_ratio=ended.get("train_flops_ratio"),
        wall_seconds=ended.get("wall_seconds", sum(r.get("epoch_seconds", 0.0) for r in history) or None),
        mlflow_run_id=(_json(folder / "mlflow_run.json") or {}).get("run_id"),
        modified=max((p.stat().st_mtime for p in files), default=folder.stat().st_mtime),
    )


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
