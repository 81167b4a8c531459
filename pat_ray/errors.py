"""Every exception pat_ray raises on purpose, in a module that imports nothing heavy.

The command line maps these to one line and an exit code before it knows which command will
run, so they must be importable without torch, Ray or MLflow; the modules that raise them
import them from here. Each is picklable, so Ray can carry it from a worker to the driver.
``first_line`` is how a message quotes someone else's error (torch's, pyarrow's) in one line;
``warnings_in_one_line`` how pat_ray's own warnings read, wherever a run prints them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path


class ConfigError(ValueError):
    """A config file could not be read or validated; ``errors`` are ``field.path: message``."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source, self.errors = source, errors
        super().__init__("\n".join(f"{source}: {e}" for e in errors))

    def __reduce__(self):
        return (type(self), (self.source, self.errors))


class BudgetError(ValueError):
    """The budget cannot be met on this model."""


class UnsupportedModelError(ValueError):
    """The tracer met an op whose channel semantics it cannot guarantee."""


class PrunedModelError(UnsupportedModelError):
    """Surgery produced a model that fails on the example input or changed its outputs' shapes."""


class PluginError(RuntimeError):
    """A plugin failed to load or to register."""


class PluginFailure(RuntimeError):
    """Plugin code raised while a run used it; names the plugin and its distribution."""


class TargetError(ValueError):
    """A target that cannot be used: bad syntax, a module that does not import, a missing name."""


class UntrustedCodeError(TargetError):
    """A target names a module the user has not trusted; nothing was imported."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, unsafe or does not fit its model."""

    def __init__(self, path: str | os.PathLike | None, problem: str) -> None:
        self.path = None if path is None else (str(path) if "://" in str(path) else Path(path))  # a URI stays one
        self.problem = problem
        where = "read from memory" if path is None else repr(str(path))
        super().__init__(f"checkpoint {where}: {problem}")

    def __reduce__(self):
        return (type(self), (self.path, self.problem))


class ExportError(ValueError):
    """The model cannot be written in the format asked for (or the format's extra is missing)."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunExistsError(FileExistsError):
    """A new run's folder already holds a run (two runs in one store chose the same version)."""


class RunInUseError(FileExistsError):
    """Another live process holds the run folder's lock."""


class ResumeChangesRunError(ValueError):
    """The config given to ``--resume`` differs from the run's in fields that change its meaning."""


class RunFinishedError(ValueError):
    """The run to resume already ran its last epoch; nothing was changed."""


class RayRunError(RuntimeError):
    """A Ray run ended for a reason pat_ray can name in one line (resources that never came,
    data missing on a worker); its message says what to do. ``resumable``: the same run can go on
    with ``--resume`` once the cause is gone (the command line adds the command)."""

    def __init__(self, message: str, resumable: bool = False) -> None:
        super().__init__(message)
        self.resumable = resumable

    def __reduce__(self):
        return (type(self), (str(self), self.resumable))


class DataRootError(RuntimeError):
    """A worker's data root does not exist on its node (raised on every rank, so none hangs)."""

    def __reduce__(self):
        return (type(self), self.args)


def first_line(err: BaseException) -> str:
    """An error's message on one line: its first (torch, pyarrow and fx append context below
    it), or the type's name when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


_python_shows = warnings.showwarning  # Python's own display, for other packages' warnings


def warnings_in_one_line(echo: Callable[[str], None]) -> None:
    """From now on, pat_ray's own warnings (the pruning plan, tracking, data on a cluster) reach
    ``echo`` as one ``warning: ...`` line each, as the command line shows them, also from a Ray
    worker, whose output the driver's console shows; other packages' warnings as Python shows them."""
    warnings.showwarning = partial(_show, echo)


def _show(echo: Callable[[str], None], message, category, filename, lineno, file=None, line=None) -> None:
    if category.__module__.startswith("pat_ray"):
        echo(f"warning: {message}")
    else:
        _python_shows(message, category, filename, lineno, file, line)
