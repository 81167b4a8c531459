"""The runs in an output folder, one line each: what ``pat-ray runs`` lists.

Read from what every run folder holds (``history.json``, ``status.json``, ``mlflow_run.json``,
the lock), never from the checkpoints, so listing a hundred runs is quick.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pat_ray.config import RESERVED_NAMES
from pat_ray.run_folder.files import HISTORY, LAST, STATUS
from pat_ray.run_folder.lock import is_held
from pat_ray.run_folder.versions import VERSION, versions
from pat_ray.storage import Location


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


def list_runs(output_dir: Location | str | Path) -> list[RunEntry]:
    """Every run in ``output_dir`` (a folder or a URI: ``NAME/VERSION`` folders, and the ``NAME``
    folders of runs made before runs had versions), newest first."""
    root = Location.given(output_dir)
    if root.is_local and not root.local_path.is_dir():
        raise FileNotFoundError(f"{output_dir} does not exist: no runs to list")
    entries = [_entry(folder, root) for folder in _run_folders(root)]
    if not root.is_local and not entries and not root.children():
        raise FileNotFoundError(f"{output_dir} does not exist or holds nothing: no runs to list")
    return sorted(entries, key=lambda entry: entry.modified, reverse=True)


def _run_folders(output_dir: Location) -> list[Location]:
    found = []
    for name in output_dir.children():
        named = output_dir / name
        if name in RESERVED_NAMES or (
            named.is_local and (named.local_path.is_symlink() or not named.local_path.is_dir())
        ):
            continue
        if _is_run(named):
            found.append(named)
        found += [named / version for version in versions(named) if _is_run(named / version)]
    return found


def _is_run(folder: Location) -> bool:
    return any((folder / name).is_file() for name in (HISTORY, LAST, STATUS))


def _entry(folder: Location, output_dir: Location) -> RunEntry:
    history = _json(folder / HISTORY) or []
    ended = _json(folder / STATUS) or {}
    last = history[-1] if history else {}
    trigger = next((r.get("epoch") for r in history if r.get("triggered")), None)
    status = "running" if is_held(folder) else ended.get("status", "interrupted")
    return RunEntry(
        name=folder.uri_path.removeprefix(output_dir.uri_path).strip("/"),
        status=status,
        trigger_epoch=ended.get("trigger_epoch", trigger),
        epochs=len(history),
        final_accuracy=ended.get("final_accuracy", last.get("val_acc")),
        flops_kept=ended.get("flops_kept", last.get("flops_kept")),
        train_flops_ratio=ended.get("train_flops_ratio"),
        wall_seconds=ended.get("wall_seconds", sum(r.get("epoch_seconds", 0.0) for r in history) or None),
        mlflow_run_id=(_json(folder / "mlflow_run.json") or {}).get("run_id"),
        modified=_modified(folder),
    )


def _modified(folder: Location) -> float:
    """When the run last wrote a file (seconds since the epoch); in a store, its version's start time."""
    if folder.is_local:
        files = [p for p in folder.local_path.iterdir() if p.is_file()]
        return max((p.stat().st_mtime for p in files), default=folder.local_path.stat().st_mtime)
    match = VERSION.match(folder.name)
    return time.mktime(time.strptime(match[1], "%Y%m%d-%H%M%S")) + int(match[2] or 1) / 1000 if match else 0.0


def _json(location: Location) -> Any:
    try:
        return json.loads(location.read_text())
    except (OSError, ValueError):
        return None
