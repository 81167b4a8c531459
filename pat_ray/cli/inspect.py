"""``pat-ray config``, ``report`` and ``plugins``: what a config can hold, what a sweep found,
what is installed."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pat_ray.cli import main
from pat_ray.plugins.names import KINDS
from pat_ray.plugins.registry import get_registry


@main.command("config", short_help="Describe the config keys (type, default, meaning); --schema for editors.")
@click.argument("key", required=False)
@click.option("--schema", is_flag=True, help="Print the JSON schema of a pipeline file instead (for editors).")
def config_keys(key: str | None, schema: bool) -> None:
    """Describe the config keys: each key's type, default and meaning, from the validated
    schema; KEY shows one key or section. --schema prints the JSON schema, which editors
    use to check and complete pipeline YAML files.

    \b
    pat-ray config                  # every key
    pat-ray config pruning.budget   # one section
    pat-ray config --schema > pat_ray.schema.json
    """
    from pat_ray.config.keys import config_schema, describe

    if schema:
        click.echo(json.dumps(config_schema(), indent=1))
        return
    for info in describe(key):
        if info.section:
            click.echo(f"\n{info.key}:" + (f"  {info.description}" if info.description else ""))
            continue
        click.echo(f"  {info.key}  ({info.type}, default {json.dumps(info.default)})")
        if info.description:
            click.echo(f"      {info.description}")


@main.command(short_help="List the runs in a folder, newest first: status and headline numbers.")
@click.argument("folder", default="runs")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run, for scripts.")
def runs(folder: str, as_json: bool) -> None:
    """List the runs in FOLDER (default: runs), newest first: name, status (running, finished,
    interrupted, failed), the epoch pruning started, final accuracy, FLOPs kept, training FLOPs
    against dense training, wall time and the MLflow run id. An interrupted run continues with
    pat-ray run ... --resume.

    \b
    pat-ray runs
    pat-ray runs runs --json | python -c "import json, sys; print([json.loads(r)['status'] for r in sys.stdin])"
    """
    from pat_ray.run_folder.index import list_runs

    entries = list_runs(folder)
    if as_json:
        for entry in entries:
            click.echo(json.dumps(entry.to_dict()))
        return
    header = ("run", "status", "trigger", "accuracy", "FLOPs kept", "train FLOPs", "wall s", "mlflow run")
    rows = [header, *(_row(entry) for entry in entries)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        click.echo("  ".join(col.ljust(w) for col, w in zip(row, widths)).rstrip())


def _row(entry) -> tuple[str, ...]:
    def number(value, form: str) -> str:
        return "-" if value is None else format(value, form)

    trigger = "-" if entry.trigger_epoch is None else f"epoch {entry.trigger_epoch}"
    ratio = "-" if entry.train_flops_ratio is None else f"{entry.train_flops_ratio:.3f}x"
    return (
        entry.name,
        entry.status,
        trigger,
        number(entry.final_accuracy, ".4f"),
        number(entry.flops_kept, ".3f"),
        ratio,
        number(entry.wall_seconds, ".1f"),
        entry.mlflow_run_id or "-",
    )


@main.command(short_help="Redraw and print an oracle sweep's report.")
@click.argument("run")
def report(run: str) -> None:
    """Redraw and print the report of the oracle sweep in folder RUN (or its oracle.json; a path
    or a URI such as file:// or s3://): report.md and the three plots are written again from
    oracle.json.

    \b
    pat-ray report runs/oracle/quick/latest
    """
    import tempfile

    from pat_ray.storage import Location
    from pat_ray.sweep.plan import read_summary
    from pat_ray.sweep.report import write_report

    where = Location.given(run)
    summary = read_summary(where)
    folder = where.parent if where.name.endswith(".json") else where
    if folder.is_local:
        click.echo(write_report(folder.local_path, summary).read_text())
        return
    with tempfile.TemporaryDirectory(prefix="pat_ray_report_") as scratch:
        written = write_report(Path(scratch), summary)
        for file in sorted(Path(scratch).iterdir()):
            (folder / file.name).upload(file)
        click.echo(written.read_text())


@main.command(short_help="List the registered models, datasets, criteria and other plugins.")
@click.option("--kind", type=click.Choice(list(KINDS)), help="Only list names of this kind.")
def plugins(kind: str | None) -> None:
    """List every registered name (models, datasets, criteria, similarity metrics, surgery
    backends, layer rules), its kind, and the plugin and distribution providing it.

    \b
    pat-ray plugins --kind criterion
    """
    entries = get_registry().entries()
    header = ("kind", "name", "plugin", "distribution")
    rows = [(e.kind, e.name, e.plugin, e.distribution) for e in entries if kind in (None, e.kind)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        click.echo("  ".join(col.ljust(w) for col, w in zip(row, widths)).rstrip())
