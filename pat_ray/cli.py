"""The ``pat-ray`` command line: parse, validate, call the library; no logic of its own.

Every expected failure prints one clear message and exits non-zero without a traceback:
2 when the input is wrong (config, checkpoint, plugin, model, an existing run), 1 when a
run failed, 130 when interrupted. ``pat-ray --debug ...`` shows the traceback instead,
for bug reports.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import click

from pat_ray.config import Config, ConfigError, config_from_dict, config_to_yaml, load_config
from pat_ray.core.graph import UnsupportedModelError
from pat_ray.core.selection import BudgetError
from pat_ray.plugins.registry import KINDS, PluginError, PluginFailure, get_registry
from pat_ray.training.checkpoint import CheckpointError

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


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class _Cli(click.Group):
    """Maps the project's exceptions to one line and an exit code, for every command."""

    def invoke(self, ctx: click.Context):
        for stop_signal in (signal.SIGTERM, signal.SIGHUP):  # schedulers, `kill`, a closed terminal: as Ctrl-C
            signal.signal(stop_signal, _stop)
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
            _fail(f"{what}; a run continues from its last finished epoch with `pat-ray run --resume`", 128 + signum)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, handled as Ctrl-C is: the run stops cleanly and says how to resume."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, frame) -> None:
    raise Stopped(signum)


def _report(err: Exception) -> None:
    from pat_ray.distributed.train import RayRunError
    from pat_ray.training.engine import TrainingDivergedError

    if isinstance(err, ConfigError):
        for line in err.errors:
            click.echo(f"{err.source}: {line}", err=True)
        sys.exit(2)
    if isinstance(err, TrainingDivergedError | PluginFailure | RayRunError):
        _fail(str(err), 1)
    if isinstance(err, INPUT_ERRORS):
        _fail(str(err).strip("'\""))
    if type(err).__module__.startswith("ray"):  # Ray wraps worker errors; show the cause, not a driver traceback
        _fail(f"the Ray run failed: {err}", 1)
    if isinstance(err, OSError):
        _fail(f"{err.strerror or err} ({err.filename or 'no file named'})", 1)
    _fail(f"internal error {type(err).__name__}: {err} (pat-ray --debug ... shows the traceback; please report it)", 1)


def _load(path: Path | None, output_dir: str | None = None) -> Config:
    """The config at ``path`` (or the default), validated with ``--output-dir`` in place."""
    cfg = load_config(path) if path is not None else Config()
    if output_dir is None:
        return cfg
    return config_from_dict({**cfg.model_dump(mode="json"), "output_dir": output_dir}, "--output-dir")


@click.group(cls=_Cli)
@click.version_option(package_name="pat-ray")
@click.option("--debug", is_flag=True, help="Show the Python traceback of an error (for bug reports).")
def main(debug: bool) -> None:
    """Pruning-aware training with the Early Pruning Indicator."""


VERBOSE = click.option("--verbose", is_flag=True, help="Show Ray's own INFO lines (worker set-up, every report).")


def _set_verbose(verbose: bool) -> None:
    if verbose:
        os.environ["PAT_RAY_VERBOSE"] = "1"  # read where Ray starts, and inherited by its workers


@main.command()
@click.argument("config", type=click.Path(path_type=Path), required=False)
@click.option("--local", is_flag=True, help="Run in this process instead of on Ray Train.")
@click.option("--output-dir", help="Override output_dir (a folder or a URI such as s3://bucket/runs).")
@click.option("--resume", is_flag=True, help="Continue the run in output_dir/name from its last checkpoint.")
@VERBOSE
def run(config: Path | None, local: bool, output_dir: str | None, resume: bool, verbose: bool) -> None:
    """Run a PaT pipeline; with no CONFIG, the embedded digits pipeline."""
    from pat_ray.api import run as run_pipeline

    _set_verbose(verbose)
    cfg = _load(config, output_dir)
    click.echo(
        f"pat-ray: {'resuming' if resume else 'running'} {cfg.name!r} "
        f"({config or 'embedded default: pipelines/digits.yaml'}), "
        f"start policy {cfg.start.kind}, budget {cfg.pruning.budget.fraction:g} of {cfg.pruning.budget.measure}"
    )
    try:
        result = run_pipeline(cfg, local=local, resume=resume)
    except PluginFailure as err:
        last = cfg.run_folder() / "last.pt"
        kept = f"the last finished epoch's checkpoint is kept: {last}" if last.is_file() else "no epoch finished"
        _fail(f"{err}\nthe run stopped; {kept}", code=1)
    click.echo(summary(result))


def summary(result) -> str:
    trigger = "never" if result.trigger_epoch is None else f"epoch {result.trigger_epoch}"
    time_kept = result.history[-1].time_kept
    time_kept = [] if time_kept is None else [f"step time kept:   {time_kept:.3f} (predicted by the latency table)"]
    return "\n".join(
        [
            "",
            f"pruning started:  {trigger}",
            f"final accuracy:   {result.final_accuracy:.4f}",
            f"FLOPs kept:       {result.flops_kept:.3f} ({result.final_flops:,} of {result.dense_flops:,} per sample)",
            *time_kept,
            f"training FLOPs:   {result.train_flops:.3e} = {result.train_flops_ratio:.3f}x dense training",
            f"wall time:        {result.wall_seconds:.1f} s",
            f"checkpoint:       {result.checkpoint}",
            *([f"mlflow run:       {result.mlflow_run_id}"] if result.mlflow_run_id else []),
        ]
    )


@main.command()
@click.argument("config", type=click.Path(path_type=Path), required=False)
@click.option("--name", help="Sweep name (default: <config name>-<timestamp>); the folder under output_dir/oracle.")
@click.option("--resume", is_flag=True, help="Continue the interrupted sweep called --name.")
@click.option("--output-dir", help="Override output_dir (a folder or a URI such as s3://bucket/runs).")
@VERBOSE
def oracle(config: Path | None, name: str | None, resume: bool, output_dir: str | None, verbose: bool) -> None:
    """Compare EPI against a grid of fixed start epochs (Ray Tune); write the report."""
    _set_verbose(verbose)
    from pat_ray.api import oracle as run_oracle
    from pat_ray.sweep.report import REPORT_FILE, verdict_lines

    if resume and not name:
        _fail("--resume needs --name, the sweep to continue")
    cfg = _load(config, output_dir)
    summary = run_oracle(cfg, name=name, resume=resume, echo=lambda line: click.echo(line))
    click.echo("")
    click.echo("\n".join(verdict_lines(summary)).replace("**", ""))
    click.echo(f"\nreport: {Path(summary.folder) / REPORT_FILE}")
    if summary.mlflow_run_id:
        click.echo(f"mlflow run: {summary.mlflow_run_id}")
    failed = [t.label for t in summary.trials if not t.ok]
    if failed:
        _fail(
            f"trials failed: {', '.join(failed)}; continue with: pat-ray oracle {config or ''} "
            f"--name {Path(summary.folder).name} --resume",
            code=1,
        )


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
def report(run: Path) -> None:
    """Redraw and print the report of the oracle sweep in folder RUN."""
    from pat_ray.sweep.plan import read_summary
    from pat_ray.sweep.report import write_report

    summary = read_summary(run)
    folder = run if run.is_dir() else run.parent
    click.echo(write_report(folder, summary).read_text())


@main.command()
@click.argument("config", type=click.Path(path_type=Path))
def validate(config: Path) -> None:
    """Validate CONFIG; print the resolved config, or every error as FILE: field: message.

    Also checks what this machine must provide for a local run (a writable output_dir, the
    device and precision asked for)."""
    from pat_ray.training.preflight import check_runnable

    cfg = _load(config)
    check_runnable(cfg, local=not cfg.scaling.use_gpu, source=str(config))
    click.echo(f"{config}: OK")
    click.echo(config_to_yaml(cfg))


@main.command()
@click.option(
    "--kind",
    type=click.Choice(list(KINDS)),
    help="Only list names of this kind.",
)
def plugins(kind: str | None) -> None:
    """List every registered name, its kind, and the plugin and distribution providing it."""
    entries = get_registry().entries()
    header = ("kind", "name", "plugin", "distribution")
    rows = [(e.kind, e.name, e.plugin, e.distribution) for e in entries if kind in (None, e.kind)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        click.echo("  ".join(col.ljust(w) for col, w in zip(row, widths)).rstrip())


if __name__ == "__main__":
    main()
