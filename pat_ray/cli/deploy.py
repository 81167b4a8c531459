"""``pat-ray export``: a finished run's pruned model as a file that loads without pat_ray."""

from __future__ import annotations

from pathlib import Path

import click

from pat_ray.cli import main
from pat_ray.export import FORMATS
from pat_ray.training.run_state import LAST


@main.command(short_help="Write a run's pruned model as state_dict, TorchScript, pt2 or ONNX (no pat_ray needed).")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="pt2", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="The file to write (default: beside the checkpoint).")
def export(run: Path, fmt: str, out: Path | None) -> None:
    """Write the pruned model of RUN (a run folder, its `latest` link, or a checkpoint file) in a
    format that loads without pat_ray. The file is checked before it is kept: loaded back, it
    must give the checkpoint's outputs within 1e-5 on a random batch of another size than the
    one traced; a model the format cannot hold (control flow on the data) is an error, and no
    file is written. The batch dimension stays free in every format.

    \b
    state_dict   the weights, plus FILE.json: base model, parameters, input shape, architecture
    torchscript  torch.jit.load(FILE)
    pt2          torch.export.load(FILE).module()          (the default)
    onnx         onnxruntime.InferenceSession(FILE)         (pip install "pat-ray[onnx]")

    \b
    pat-ray export runs/digits/latest
    pat-ray export runs/digits/latest --format onnx --out digits.onnx
    """
    from pat_ray.export import export_model

    checkpoint = run / LAST if run.is_dir() else run
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint} does not exist: give a run folder or a checkpoint file")
    written = export_model(checkpoint, fmt, out)
    click.echo(f"{fmt}: {written}")
    if fmt == "state_dict":
        click.echo(f"architecture: {written.with_suffix('.json')}")
