"""``pat-ray run``, ``oracle`` and ``validate``: a pipeline config (plus overrides) in, a run out."""

from __future__ import annotations

import os
import shlex
import tempfile
from pathlib import Path

import click

from pat_ray.cli import connects_to_ray, fail, load, main
from pat_ray.config import config_to_yaml
from pat_ray.config.fields import data_on_workers
from pat_ray.config.keys import is_override
from pat_ray.errors import PluginFailure, RunFinishedError
from pat_ray.plugins.user_code import trust
from pat_ray.run_folder.files import CONFIG, LAST, PREVIOUS
from pat_ray.run_folder.versions import LATEST, VERSION
from pat_ray.storage import Location

CONFIG_FILE = click.argument("config", required=False)
OVERRIDES = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
OUTPUT_DIR = click.option("--output-dir", help="Override output_dir (a folder or a URI such as s3://bucket/runs).")
VERBOSE = click.option("--verbose", is_flag=True, help="Show Ray's own INFO lines (worker set-up, every report).")
TRUST = click.option(
    "--trust",
    multiple=True,
    metavar="MODULE",
    callback=lambda ctx, param, modules: _trusted(modules),
    expose_value=False,
    is_eager=True,
    help="Allow importing MODULE (and its submodules) for model.target / data.target and for checkpoints made from "
    "them; repeat for several (or PAT_RAY_TRUST=a,b). Nothing else is ever imported from a config or checkpoint.",
)


def _trusted(modules: tuple[str, ...]) -> tuple[str, ...]:
    trust(*modules)  # before the config is read: validation imports the targets it names
    return modules


def _set_verbose(verbose: bool) -> None:
    if verbose:
        os.environ["PAT_RAY_VERBOSE"] = "1"  # read where Ray starts, and inherited by its workers


@main.command(short_help="Train a pipeline with PaT + EPI (on Ray, or --local); KEY=VALUE overrides.")
@CONFIG_FILE
@OVERRIDES
@click.option("--local", is_flag=True, help="Run in this process instead of on Ray.")
@click.option("--name", help="The run's name (default: the config's `name`); runs go to output_dir/NAME/<time>.")
@OUTPUT_DIR
@click.option(
    "--resume",
    is_flag=False,
    flag_value=LATEST,
    default=None,
    metavar="[RUN]",
    help="Continue a run from its last checkpoint: the newest of this name, or RUN (a version such as "
    "20261202-101500, or a run folder).",
)
@VERBOSE
@TRUST
def run(
    config: str | None,
    overrides: tuple[str, ...],
    local: bool,
    name: str | None,
    output_dir: str | None,
    resume: str | None,
    verbose: bool,
) -> None:
    """Train a pipeline with PaT + EPI: dense until the kept architecture stops changing, then
    pruned (channels physically removed) to the end of the same schedule. CONFIG is a YAML
    pipeline (default: the embedded digits pipeline); KEY=VALUE pairs set any config key
    (YAML values) before validation. Each run gets its own folder, output_dir/NAME/<start
    time> (output_dir/NAME/latest links to the newest), holding last.pt, history.json and
    config.yaml; a run never overwrites another. --resume continues the newest run of the
    name, --resume RUN the one given (with a run folder and no CONFIG, its config.yaml).

    \b
    pat-ray run
    pat-ray run pipelines/digits.yaml training.epochs=8 start.snapshot_every=0.25 pruning.budget.fraction=0.3 --local
    pat-ray run pipelines/digits.yaml training.epochs=6 start.kind=fixed start.epoch=2 --name short --local
    pat-ray run pipelines/digits.yaml training.epochs=6 start.kind=fixed start.epoch=2 --name short --resume --local
    pat-ray run --resume runs/digits/latest
    """
    from pat_ray.api import run as run_pipeline
    from pat_ray.api import run_to_resume
    from pat_ray.errors import RayRunError

    _set_verbose(verbose)
    config, which, overrides = _resume_target(config, resume, overrides)
    cfg = load(config, (*overrides, *([f"name={name}"] if name else [])), output_dir)
    click.echo(
        f"pat-ray: {'resuming' if which else 'running'} {cfg.name!r} "
        f"({config if config and not is_override(config) else 'embedded default: pipelines/digits.yaml'}), "
        f"start policy {cfg.start.kind}, budget {cfg.pruning.budget.fraction:g} of {cfg.pruning.budget.measure}"
    )
    if not local:
        connects_to_ray()
    try:
        result = run_pipeline(cfg, local=local, resume=which)
    except KeyboardInterrupt as err:
        err.hint = _continue_hint(getattr(err, "run_folder", None), local)  # type: ignore[attr-defined]
        raise
    except RunFinishedError as err:  # resuming what already ended is done, not wrong: scripts may always --resume
        click.echo(f"pat-ray: {err}")
        return
    except RayRunError as err:
        if err.resumable:  # once the resources are back: the command that continues this very run
            fail(f"{err}; {_continue_hint(run_to_resume(cfg, which or True), local)}", code=1)
        raise
    except PluginFailure as err:
        last = run_to_resume(cfg, which or True) / LAST  # this run: the newest of its name, or the one resumed
        kept = f"the last finished epoch's checkpoint is kept: {last}" if last.is_file() else "no epoch finished"
        fail(f"{err}\nthe run stopped; {kept}", code=1)
    click.echo(summary(result))
    if not result.at_budget:
        budget = cfg.pruning.budget
        fail(
            f"the run ended keeping {result.budget_share or result.flops_kept:.3f} of its {budget.measure}, above its "
            f"budget of {budget.fraction:g}; its status is off_budget, not finished",
            code=1,
        )


def _resume_target(
    config: str | None, resume: str | None, overrides: tuple[str, ...]
) -> tuple[str | None, bool | str, tuple[str, ...]]:
    """What ``--resume [RUN]`` asks for, as ``(config path, resume, overrides)`` for ``pat_ray.run``.

    ``--resume`` just before CONFIG or a KEY=VALUE takes it as its value (click cannot tell
    them apart): a YAML file is read as the config, a KEY=VALUE that names no folder as an
    override. A run folder (a path, or a URI such as ``file://`` or ``s3://``) given with no
    CONFIG brings its own ``config.yaml``, so ``pat-ray run --resume runs/digits/latest`` needs
    nothing else."""
    if resume is None:
        return config, False, overrides
    if resume == LATEST:
        return config, True, overrides
    if config is None and resume.endswith((".yaml", ".yml")) and Path(resume).is_file():
        return resume, True, overrides
    if "=" in resume and "://" not in resume and not Path(resume).exists():
        return config, True, (resume, *overrides)
    if config is None and not VERSION.match(resume):
        folder = Location.given(resume)
        if (folder / CONFIG).is_file():
            return _local_copy(folder / CONFIG), folder.uri, overrides
    return config, resume, overrides


def _continue_hint(folder: Location | None, local: bool) -> str:
    """How to continue a stopped run: a command that works when pasted, or why there is none."""
    if folder is None:
        return "the run had not started: nothing to resume"
    if not (folder / LAST).is_file() and not (folder / PREVIOUS).is_file():
        return f"no epoch had finished, so there is nothing to resume ({folder} is listed as interrupted)"
    return f"to continue it from its last finished epoch: pat-ray run --resume {shlex.quote(str(folder))}" + (
        " --local" * local
    )


def _local_copy(file: Location) -> str:
    """``file`` as a local path (a copy, for a file in a store) that ``load`` can read."""
    if file.is_local:
        return str(file.local_path)
    return str(file.download(Path(tempfile.mkdtemp(prefix="pat_ray_config_")) / file.name))


def summary(result) -> str:
    trigger = result.start_text()
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


@main.command(short_help="Compare EPI against a grid of fixed start epochs (Ray Tune); write the report.")
@CONFIG_FILE
@OVERRIDES
@click.option("--name", help="Sweep name (default: the config's `name`); sweeps go to output_dir/oracle/NAME/<time>.")
@click.option(
    "--resume",
    is_flag=False,
    flag_value=LATEST,
    default=None,
    metavar="[SWEEP]",
    help="Continue an interrupted sweep: the newest of this name, or SWEEP (a version such as 20261202-101500).",
)
@OUTPUT_DIR
@VERBOSE
@TRUST
def oracle(
    config: str | None,
    overrides: tuple[str, ...],
    name: str | None,
    resume: str | None,
    output_dir: str | None,
    verbose: bool,
) -> None:
    """Compare EPI against an oracle: the same PaT recipe with pruning started at each epoch of
    a grid (oracle.start_epochs), plus EPI, Early-Bird, dense and train-prune-fine-tune trials,
    once per seed (oracle.seeds), on Ray Tune. Writes report.md, plots and oracle.json to
    output_dir/oracle/NAME/<start time>, with the verdict: EPI's accuracy and training cost
    against the grid's reference start, and the tau that would have picked it. --resume
    continues the newest sweep of the name (finished trials are kept).

    \b
    pat-ray oracle pipelines/digits.yaml training.epochs=6 oracle.start_epochs=[0,2] oracle.policies=[epi] --name quick
    pat-ray report runs/oracle/quick/latest
    """
    _set_verbose(verbose)
    from pat_ray.api import oracle as run_oracle
    from pat_ray.sweep.report import REPORT_FILE, verdict_lines

    config, which, overrides = _resume_target(config, resume, overrides)
    cfg = load(config, overrides, output_dir)
    connects_to_ray()
    again = _oracle_command(config, overrides, name or cfg.name, output_dir)
    try:
        summary = run_oracle(cfg, name=name, resume=which, echo=lambda line: click.echo(line))
    except KeyboardInterrupt as err:
        err.hint = f"to continue the sweep (finished trials are kept): {again} --resume"  # type: ignore[attr-defined]
        raise
    click.echo("")
    click.echo("\n".join(verdict_lines(summary)).replace("**", ""))
    click.echo(f"\nreport: {Location.of(summary.folder) / REPORT_FILE}")
    if summary.mlflow_run_id:
        click.echo(f"mlflow run: {summary.mlflow_run_id}")
    failed = [t.label for t in summary.trials if not t.ok]
    if failed:
        version = Location.of(summary.folder).name
        fail(f"trials failed: {', '.join(failed)}; continue with: {again} --resume {version}", 1)


def _oracle_command(config: str | None, overrides: tuple[str, ...], name: str, output_dir: str | None) -> str:
    """``pat-ray oracle`` with what made this sweep's config: pasted with ``--resume``, it continues it."""
    words = ["pat-ray", "oracle", *([config] if config else []), *overrides, "--name", name]
    words += ["--output-dir", output_dir] if output_dir else []
    return " ".join(shlex.quote(word) for word in words)


@main.command(short_help="Validate a config (with overrides); print it resolved, or every error.")
@CONFIG_FILE
@OVERRIDES
@TRUST
def validate(config: str | None, overrides: tuple[str, ...]) -> None:
    """Validate CONFIG (with any KEY=VALUE overrides) and print the resolved config, or every
    error as SOURCE: field: message, exit 2. Also checks what this machine must provide for a
    local run (a writable output_dir or a reachable store, the device and precision asked for,
    the data) and that the pruning steps fit the schedule once the data says how long an epoch
    is (a start policy that cannot fire before its latest start is a warning).

    \b
    pat-ray validate pipelines/digits.yaml
    pat-ray validate pipelines/digits.yaml training.epochs=3 start.kind=never
    pat-ray validate pipelines/digits.yaml start.kind=fixed start.epoch=4 pruning.interval=20
    """
    from pat_ray.training.preflight import check_runnable, check_schedule

    cfg = load(config, overrides)
    source = str(config or "the default pipeline")
    check_runnable(cfg, local=not cfg.scaling.use_gpu, source=source)
    if not data_on_workers():  # on a cluster the data may be on the workers only: the run checks it there
        for note in check_schedule(cfg, local=False, source=source):
            click.echo(f"warning: {note}", err=True)
    click.echo(f"{config or 'the default pipeline'}{' with ' + ' '.join(overrides) if overrides else ''}: OK")
    click.echo(config_to_yaml(cfg))
