"""Versioned folders: each run and each oracle sweep gets ``<parent>/<name>/<version>``.

A version is the start time, ``YYYYmmdd-HHMMSS`` (``-2``, ``-3``, ... when two start within
one second), so a rerun never meets an earlier run's files, and versions sort in the order
they started: "the latest" needs no pointer that could go stale. On a local disk
``<name>/latest`` is also a symbolic link to the newest version, for people and shell scripts
(``runs/digits/latest/last.pt``); object stores have no links, so there only listing finds it.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from pat_ray.storage import Location

LATEST = "latest"
VERSION = re.compile(r"^(\d{8}-\d{6})(?:-(\d+))?$")


def _order(version: str) -> tuple[str, int]:
    match = VERSION.match(version)
    assert match is not None
    return match[1], int(match[2] or 1)


def versions(parent: Location) -> list[str]:
    """The versions in ``parent`` (a ``<name>`` folder), oldest first."""
    return sorted((name for name in parent.children() if VERSION.match(name)), key=_order)


def new_version(parent: Location) -> Location:
    """A version folder in ``parent`` that no run has used; created at once on a local disk,
    so two runs starting in the same second take different ones."""
    if parent.is_file():
        raise FileExistsError(f"{parent} is a file; output_dir/name must be a folder (or free) for runs to go in")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    taken = set(versions(parent))
    for count in range(1, 10_000):
        version = stamp if count == 1 else f"{stamp}-{count}"
        if version in taken:
            continue
        folder = parent / version
        if not folder.is_local:
            return folder  # a store folder exists once a file is in it; the run's lock is taken next
        try:
            folder.local_path.mkdir(parents=True)
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"{parent}: no free version for {stamp}")


def find_version(parent: Location, which: str | None = None) -> Location:
    """The version ``which`` of ``parent`` (``None`` or ``latest``: the newest one).

    FileNotFoundError names the versions there are, or says that there are none."""
    found = versions(parent)
    if not found:
        raise FileNotFoundError(f"{parent} holds nothing to continue: no run or sweep folder (YYYYmmdd-HHMMSS) in it")
    if which in (None, LATEST):
        return parent / found[-1]
    if which not in found:
        shown = ", ".join(found[-5:])
        raise FileNotFoundError(f"{parent} has no version {which!r}; the newest are: {shown}")
    return parent / which


def point_latest(folder: Location) -> None:
    """Make ``<name>/latest`` a link to ``folder`` (a local version folder); nothing in a store.

    The link is replaced with a rename, so a reader never finds it missing."""
    if not folder.is_local:
        return
    path = folder.local_path
    link, temp = path.parent / LATEST, path.parent / f".{LATEST}.{os.getpid()}"
    if link.exists() and not link.is_symlink():
        return  # a file or folder of the user's own called "latest": leave it alone
    try:
        temp.unlink(missing_ok=True)
        temp.symlink_to(path.name)
        os.replace(temp, link)
    except OSError:  # a filesystem without links: listing still finds the newest
        Path(temp).unlink(missing_ok=True)
