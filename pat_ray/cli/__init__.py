"""The ``pat-ray`` command line: parse, validate, call the library; no logic of its own.

The group and its error handling live here; the commands in ``pipelines`` (run, oracle,
validate) and ``inspect`` (config, report, plugins).

Every expected failure prints one clear message and exits non-zero without a traceback:
2 when the input is wrong (config, checkpoint, plugin, model, an existing run), 1 when a
run failed, 130 when interrupted. ``pat-ray --debug ...`` shows the traceback instead,
for bug reports.
"""

from __future__ import annotations

import atexit
import gc
import os
import signal
import sys
from pathlib import Path

import click

from pat_ray.config import Config, load_config
from pat_ray.config.keys import is_override
from pat_ray.errors import (
    BudgetError,
    CheckpointError,
    ConfigError,
    PluginError,
    PluginFailure,
    RayRunError,
    TrainingDivergedError,
    UnsupportedModelError,
    warnings_in_one_line,
)

INPUT_ERRORS = (  # exit 2: what the user gave is wrong
    CheckpointError,
    PluginError,
    FileNotFoundError,
    FileExistsError,
    UnsupportedModelError,
    BudgetError,
    ValueError,
    KeyError,
)


# The last exit handler (they run last registered first, and this one is registered before the
# command imports Ray or MLflow): by then Ray's shutdown and MLflow's flush have run and every
# file the command wrote is closed. Frozen, the heap torch and scikit-learn leave is not collected
# again and again while the interpreter tears its modules down (half a second of every `pat-ray
# run` on two cores).
atexit.register(gc.freeze)

GENERIC_HINT = "nothing was written that could be continued"  # commands that can resume say how instead


def fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class _Cli(click.Group):
    """Maps the project's exceptions to one line and an exit code, for every command."""

    def invoke(self, ctx: click.Context):
        global _ray_connected
        _ray_connected = False  # this command's own: an earlier one in the process (tests, a notebook) may have set it
        for stop_signal in (signal.SIGTERM, signal.SIGHUP):  # schedulers, `kill`, a closed terminal: as Ctrl-C
            signal.signal(stop_signal, _stop)
        # Ctrl-C stops a run even where the process started with SIGINT ignored (a command put in
        # the background by a non-interactive shell inherits that, and Python then installs no handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        warnings_in_one_line(lambda line: click.echo(line, err=True))
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except BrokenPipeError:  # `pat-ray ... | head`: the reader left; say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except Exception as err:
            if ctx.params.get("debug"):
                raise
            _report(err)
        except KeyboardInterrupt as err:
            if ctx.params.get("debug"):
                raise
            signum = err.signum if isinstance(err, Stopped) else int(signal.SIGINT)
            what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
            click.echo(f"error: {what}; {getattr(err, 'hint', None) or GENERIC_HINT}", err=True)
            _exit(128 + signum)


_ray_connected = False  # set by the commands that connect this process to Ray


def connects_to_ray() -> None:
    """Called by a command before it starts work on Ray (``_exit`` needs to know)."""
    global _ray_connected
    _ray_connected = True


def _exit(code: int) -> None:
    """Exit after a stop signal. After a Ray run, skip the interpreter's teardown: Ray's own
    threads may still be winding down from the dropped connection, and finalizing Python
    under them can end the process with SIGSEGV instead of ``code`` (seen on CI). The run
    folder and MLflow run were closed before this point; only the streams need a flush."""
    if not _ray_connected:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled as Ctrl-C is: the run stops cleanly and says how to resume."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, frame) -> None:
    raise Stopped(signum)


def _report(err: Exception) -> None:

    if isinstance(err, ConfigError):
        for line in err.errors:
            click.echo(f"{err.source}: {line}", err=True)
        sys.exit(2)
    if isinstance(err, TrainingDivergedError | PluginFailure | RayRunError):
        fail(str(err), 1)
    if isinstance(err, INPUT_ERRORS):
        fail(str(err).strip("'\""))
    if type(err).__module__.startswith("ray"):  # Ray wraps worker errors; show the cause, not a driver traceback
        fail(f"the Ray run failed: {err}", 1)
    if isinstance(err, OSError):
        fail(f"{err.strerror or err}" + (f" ({err.filename})" if err.filename else ""), 1)
    fail(f"internal error {type(err).__name__}: {err} (pat-ray --debug ... shows the traceback; please report it)", 1)


def load(path: str | None, overrides: tuple[str, ...] = (), output_dir: str | None = None) -> Config:
    """The config at ``path`` (or the default pipeline) with ``key=value`` overrides and
    ``--output-dir`` merged in before validation, so every error names its key. A first
    argument that is an override rather than a file is taken as one."""
    if path is not None and is_override(path) and not Path(path).exists():
        overrides = (path, *overrides)
        path = None
    if output_dir is not None:
        overrides = (*overrides, f"output_dir={output_dir}")
    return load_config(path, overrides)


@click.group(cls=_Cli)
@click.version_option(package_name="pat-ray")
@click.option("--debug", is_flag=True, help="Show the Python traceback of an error (for bug reports).")
def main(debug: bool) -> None:
    """Pruning-aware training with the Early Pruning Indicator: train a CNN dense for a few
    epochs, prune it structurally as soon as the sub-network a global channel ranking would keep
    stops changing, and finish the same run on the smaller model.

    \b
    pat-ray run                                  # the embedded digits pipeline, on Ray
    pat-ray run pipelines/digits.yaml training.epochs=8 start.snapshot_every=0.25 --local
    pat-ray oracle pipelines/digits.yaml training.epochs=6 oracle.start_epochs=[0,2] oracle.policies=[epi] --name quick
    pat-ray config training                      # every key of a section: type, default, meaning
    """


from pat_ray.cli import deploy, inspect, pipelines  # noqa: E402,F401  (registers the commands on main)
