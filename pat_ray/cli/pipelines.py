"""``pat-ray run``, ``oracle`` and ``validate``: a pipeline config (plus overrides) in, a run out."""

from __future__ import annotations

import os
from pathlib import Path

import click

from pat_ray.cli import connects_to_ray, fail, load, main
from pat_ray.config import config_to_yaml
from pat_ray.plugins.registry import PluginFailure
from pat_ray.storage import Location
from pat_ray.training.run_state import LAST
from pat_ray.training.run_versions import LATEST

CONFIG = click.argument("config", required=False)
OVERRIDES = click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
OUTPUT_DIR = click.option("--output-dir", help="Override output_dir (a folder or a URI such as s3://bucket/runs).")
VERBOSE = click.option("--verbose", is_flag=True, help="Show Ray's own INFO lines (worker set-up, every report).")


def _set_verbose(verbose: bool) -> None:
    if verbose:
        os.environ["PAT_RAY_VERBOSE"] = "1"  # read where Ray starts, and inherited by its workers


@main.command(short_help="Train a pipeline with PaT + EPI (on Ray, or --local); KEY=VALUE overrides.")
@CONFIG
@OVERRIDES
@click.option("--local", is_flag=True, help="Run in this process instead of on Ray Train.")
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
    pat-ray run pipelines/digits.yaml training.epochs=3 pruning.budget.fraction=0.3 --local
    pat-ray run pipelines/digits.yaml --name short --resume
    pat-ray run --resume runs/digits/20261202-101500
    """
    from pat_ray.api import run as run_pipeline
    from pat_ray.api import run_to_resume

    _set_verbose(verbose)
    config, which, overrides = _resume_target(config, resume, overrides)
    cfg = load(config, (*overrides, *([f"name={name}"] if name else [])), output_dir)
    click.echo(
        f"pat-ray: {'resuming' if which else 'running'} {cfg.name!r} "
        f"({config or 'embedded default: pipelines/digits.yaml'}), "
        f"start policy {cfg.start.kind}, budget {cfg.pruning.budget.fraction:g} of {cfg.pruning.budget.measure}"
    )
    if not local:
        connects_to_ray()
    try:
        result = run_pipeline(cfg, local=local, resume=which, overrides=_given(config, overrides))
    except PluginFailure as err:
        last = run_to_resume(cfg, which or True) / LAST  # this run: the newest of its name, or the one resumed
        kept = f"the last finished epoch's checkpoint is kept: {last}" if last.is_file() else "no epoch finished"
        fail(f"{err}\nthe run stopped; {kept}", code=1)
    click.echo(summary(result))


def _resume_target(
    config: str | None, resume: str | None, overrides: tuple[str, ...]
) -> tuple[str | None, bool | str, tuple[str, ...]]:
    """What ``--resume [RUN]`` asks for, as ``(config path, resume, overrides)`` for ``pat_ray.run``.

    ``--resume`` just before CONFIG or a KEY=VALUE takes it as its value (click cannot tell
    them apart): a YAML file is read as the config, a KEY=VALUE that names no folder as an
    override. A run folder given with no CONFIG brings its own ``config.yaml``, so
    ``pat-ray run --resume runs/digits/latest`` needs nothing else."""
    if resume is None:
        return config, False, overrides
    if resume == LATEST:
        return config, True, overrides
    if config is None and resume.endswith((".yaml", ".yml")) and Path(resume).is_file():
        return resume, True, overrides
    if "=" in resume and not Path(resume).exists():
        return config, True, (resume, *overrides)
    if config is None and (Path(resume) / "config.yaml").is_file():
        return str(Path(resume) / "config.yaml"), str(Path(resume).resolve()), overrides
    return config, resume, overrides


def _given(config: str | None, overrides: tuple[str, ...]) -> list[str]:
    return [*([config] if config is not None and "=" in config and not Path(config).exists() else []), *overrides]


def summary(result) -> str:
    trigger = result.trigger_text()
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
@CONFIG
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
    pat-ray oracle pipelines/digits.yaml oracle.seeds=[0,1,2]
    pat-ray oracle pipelines/fashion_mnist_study_cpu.yaml --name magnitude --resume
    """
    _set_verbose(verbose)
    from pat_ray.api import oracle as run_oracle
    from pat_ray.sweep.report import REPORT_FILE, verdict_lines

    config, which, overrides = _resume_target(config, resume, overrides)
    cfg = load(config, overrides, output_dir)
    connects_to_ray()
    summary = run_oracle(cfg, name=name, resume=which, echo=lambda line: click.echo(line))
    click.echo("")
    click.echo("\n".join(verdict_lines(summary)).replace("**", ""))
    click.echo(f"\nreport: {Location.of(summary.folder) / REPORT_FILE}")
    if summary.mlflow_run_id:
        click.echo(f"mlflow run: {summary.mlflow_run_id}")
    failed = [t.label for t in summary.trials if not t.ok]
    if failed:
        fail(
            f"trials failed: {', '.join(failed)}; continue with: pat-ray oracle {config or ''} "
            f"--name {name or cfg.name} --resume {Location.of(summary.folder).name}",
            code=1,
        )


@main.command(short_help="Validate a config (with overrides); print it resolved, or every error.")
@CONFIG
@OVERRIDES
def validate(config: str | None, overrides: tuple[str, ...]) -> None:
    """Validate CONFIG (with any KEY=VALUE overrides) and print the resolved config, or every
    error as SOURCE: field: message, exit 2. Also checks what this machine must provide for a
    local run: a writable output_dir, the device and precision asked for, the data.

    \b
    pat-ray validate pipelines/imagenet_resnet50.yaml
    pat-ray validate pipelines/digits.yaml training.epochs=3 start.kind=never
    """
    from pat_ray.training.preflight import check_runnable

    cfg = load(config, overrides)
    check_runnable(cfg, local=not cfg.scaling.use_gpu, source=str(config or "the default pipeline"))
    click.echo(f"{config or 'the default pipeline'}{' with ' + ' '.join(overrides) if overrides else ''}: OK")
    click.echo(config_to_yaml(cfg))
