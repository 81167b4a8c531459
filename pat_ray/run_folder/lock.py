"""One writer per run folder: an OS file lock held while a run (or a resume of it) is alive.

The lock is ``fcntl.flock`` on ``<run folder>/.lock``: the kernel drops it when the process
ends, however it ends, so a crash never leaves a stale lock (the file itself stays, holding
the last holder's pid, host and start time, which only matter while that holder is alive). A
run folder in a store (``s3://...``) is locked through a local file named after its URI, in
``~/.cache/pat_ray/locks``: that keeps two runs on one machine apart; runs started on two
machines against one bucket are not (object stores have no lock to take).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from pat_ray.errors import RunInUseError
from pat_ray.storage import Location

LOCK = ".lock"


def lock_file(folder: Location) -> Path:
    if folder.is_local:
        return folder.local_path / LOCK
    digest = hashlib.sha256(folder.uri.encode()).hexdigest()[:24]
    return Path.home() / ".cache" / "pat_ray" / "locks" / f"{digest}.lock"


class Held:
    """A held lock; ``announce`` records this process as the holder, once the run is sure to go
    ahead (a refused attempt leaves the file as it found it)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.announced = False

    def announce(self) -> None:
        self.announced = True
        os.ftruncate(self.fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(
            self.fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}).encode(), 0
        )


@contextmanager
def holding(folder: Location, what: str) -> Iterator[Held]:
    """Hold ``folder``'s lock for the body; RunInUseError at once, naming the holder, if another
    process holds it. ``what``: the kind of work ("run", "sweep"), for the message."""
    path = lock_file(folder)
    made = folder.is_local and not path.parent.exists()  # a refused resume of a typo must leave no folder
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    held = Held(fd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunInUseError(
                f"{folder} is in use by another {what} ({_holder(fd)}); nothing was changed. Wait for it to end, "
                "or choose another name"
            ) from None
        yield held
    except BaseException:
        if made and not held.announced:
            _remove_made(path)
        raise
    finally:
        os.close(fd)  # releases the lock


def _remove_made(path: Path) -> None:
    """The lock file and the folder ``holding`` made for it, if nothing else was written there."""
    path.unlink(missing_ok=True)
    with suppress(OSError):
        path.parent.rmdir()


def _holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {data['pid']} on {data['host']}, started {data['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown: it is starting"


def is_held(folder: Location) -> bool:
    """Whether a live process (on this machine, for a folder in a store) holds ``folder``'s lock."""
    path = lock_file(folder)
    if not path.is_file():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
