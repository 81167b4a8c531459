"""``RunFolder``: one run's folder, ``output_dir/<name>/<version>``, local or in a store.

Everything a run does with its folder goes through this type: making a new version or
finding the one to resume, locking it while the run holds it, refusing to start over an
earlier run, choosing the checkpoint to continue from (after checking that the config would not
change the run), pointing ``latest`` at it, mirroring a staged run into a store and recording
how the run ended. ``pat_ray.run``, the command line, the Ray runner and the oracle's sweeps
(whose folders are versioned and locked the same way) use it.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pat_ray.errors import CheckpointError, RunExistsError
from pat_ray.run_folder.files import HISTORY, LAST, PREVIOUS, STATUS
from pat_ray.run_folder.lock import Held, holding
from pat_ray.run_folder.versions import LATEST, VERSION, find_version, new_version, point_latest
from pat_ray.storage import Location

if TYPE_CHECKING:
    from pat_ray.config import Config
    from pat_ray.run_folder.mirror import StoreMirror
    from pat_ray.training.checkpoint import Checkpoint
    from pat_ray.training.reporters import Reporter


@dataclass(frozen=True)
class RunFolder:
    """A run's (or a sweep's) folder. ``location``: where it is (a path or a store URI)."""

    location: Location

    @classmethod
    def new(cls, parent: Location) -> RunFolder:
        """A new version folder under ``parent`` (``output_dir/name``), named by the start time."""
        return cls(new_version(parent))

    @classmethod
    def of(cls, parent: Location, which: bool | str) -> RunFolder:
        """The folder ``which`` names under ``parent``: the newest version (``True``), one of
        them (``"20261202-101500"``, ``"latest"``), or a folder's own path or URI."""
        if isinstance(which, str) and which != LATEST and not VERSION.match(which):
            return cls(Location.given(which))
        if which is True and (parent / LAST).exists():
            return cls(parent)  # a run written before runs had versions
        return cls(find_version(parent, None if isinstance(which, bool) else which))

    def __truediv__(self, name: str) -> Location:
        return self.location / name

    def __str__(self) -> str:
        return str(self.location)

    @property
    def name(self) -> str:
        return self.location.name

    @contextmanager
    def locked(self, what: str) -> Iterator[Held]:
        """Held while the block runs: a second run or sweep of this folder fails at once
        (``RunInUseError``) naming the holder; released however the block ends."""
        with holding(self.location, what) as held:
            yield held

    def point_latest(self) -> None:
        """``<parent>/latest`` names this folder (on a local disk)."""
        point_latest(self.location)

    def check_new(self) -> None:
        """Refuse to start a run over an earlier one; say what the user can do instead. Version
        folders make this rare: only two runs writing to one store within a second meet it."""
        if self.location.is_file():
            raise RunExistsError(f"{self} is a file; output_dir/name must be a folder")
        found = [name for name in (LAST, PREVIOUS, HISTORY) if (self / name).exists()]
        if found:
            raise RunExistsError(
                f"{self} already holds a run ({', '.join(found)}); nothing was changed. Start again (a new "
                f"version folder), or continue that run with `pat-ray run --resume {shlex.quote(str(self))}`"
            )

    def resume_point(self, config: Config, scratch: Path, warn: Callable[[str], None] | None = None) -> Path:
        """The checkpoint to continue from, as a local file (a copy in ``scratch`` for a folder
        in a store): ``last.pt``, or the one it replaced when ``last.pt`` is damaged (``warn``
        says so), once it is clear that ``config`` continues the same run (else
        ``ResumeChangesRunError`` / ``RunFinishedError``)."""
        from pat_ray.run_folder.resume_check import check_resume

        warn = warn or (lambda line: print(line, file=sys.stderr))
        checkpoint, ckpt, epoch = self._newest_readable(scratch, warn)
        allowed = check_resume(ckpt.extra.get("config"), config, epoch, str(self))
        if allowed:
            warn(f"note: resuming with changes that do not alter the run: {'; '.join(allowed)}")
        return checkpoint

    def _newest_readable(self, scratch: Path, warn: Callable[[str], None]) -> tuple[Path, Checkpoint, int]:
        """``last.pt``, else ``previous.pt``: the local file, the checkpoint read from it (once)
        and its last finished epoch."""
        last, previous = self / LAST, self / PREVIOUS
        if not last.exists() and not previous.exists():
            raise CheckpointError(str(last), f"does not exist: there is no run to resume in {self}")
        try:
            return _readable(last, scratch)
        except CheckpointError as err:
            if not previous.is_file():
                raise
            local, ckpt, epoch = _readable(previous, scratch)
            warn(f"warning: {err}; resuming from {previous} (epoch {epoch}) instead")
            return local, ckpt, epoch

    def mirror(self, reporter: Reporter, stage: Path, config: Config) -> StoreMirror:
        """A reporter that copies a run staged in ``stage`` into this folder (in a store) after
        every epoch, then hands the epoch on to ``reporter``."""
        from pat_ray.run_folder.mirror import StoreMirror

        return StoreMirror(reporter, stage, self.location, config)

    def record_end(self, status: dict[str, Any]) -> None:
        """``status.json``: how the run ended, for ``pat-ray runs`` (best effort: a full disk may be why)."""
        try:
            (self / STATUS).write_text(json.dumps(status, indent=1))
        except OSError:
            pass


def _readable(checkpoint: Location, scratch: Path) -> tuple[Path, Checkpoint, int]:
    """``checkpoint`` as a local file, checked whole (raises CheckpointError naming what is
    wrong), with what was read from it and its last finished epoch."""
    from pat_ray.training.checkpoint import read_checkpoint
    from pat_ray.training.run_state import RunState

    if checkpoint.is_local:
        ckpt = read_checkpoint(checkpoint.local_path)
        return checkpoint.local_path, ckpt, RunState.from_checkpoint(ckpt).epoch
    if not checkpoint.is_file():
        raise CheckpointError(str(checkpoint), "does not exist")
    local = checkpoint.download(scratch / checkpoint.name)
    try:
        ckpt = read_checkpoint(local)
        return local, ckpt, RunState.from_checkpoint(ckpt).epoch
    except CheckpointError as err:
        raise CheckpointError(str(checkpoint), err.problem) from None
