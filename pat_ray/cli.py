"""The ``pat-ray`` command line: parse, validate, call the library; no logic of its own."""

from __future__ import annotations

import sys

import click

from pat_ray.registry import PluginError, get_registry


@click.group()
@click.version_option(package_name="pat-ray")
def main() -> None:
    """Pruning-aware training with the Early Pruning Indicator."""


@main.command()
@click.option(
    "--kind",
    type=click.Choice(["criterion", "similarity", "surgery", "model", "dataset"]),
    help="Only list names of this kind.",
)
def plugins(kind: str | None) -> None:
    """List every registered name, its kind, and the plugin and distribution providing it."""
    try:
        entries = get_registry().entries()
    except PluginError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    rows = [(e.kind, e.name, e.plugin, e.distribution) for e in entries if kind in (None, e.kind)]
    widths = [
        max(len(r[i]) for r in rows + [("kind", "name", "plugin", "distribution")])
        for i in range(4)
    ]
    for row in [("kind", "name", "plugin", "distribution"), *rows]:
        click.echo("  ".join(col.ljust(w) for col, w in zip(row, widths)).rstrip())
