"""``pat-ray export``: a finished run's pruned model as a file that loads without pat_ray."""

from __future__ import annotations

from pathlib import Path

import click

from pat_ray.cli import main
from pat_ray.cli.pipelines import TRUST
from pat_ray.export_formats import FORMATS
from pat_ray.run_folder.files import LAST
from pat_ray.storage import Location


@main.command(short_help="Write a run's pruned model as state_dict, TorchScript, pt2 or ONNX (no pat_ray needed).")
@click.argument("run")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="pt2", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="The file to write (default: beside the checkpoint).")
@TRUST
def export(run: str, fmt: str, out: Path | None) -> None:
    """Write the pruned model of RUN (a run folder, its `latest` link, or a checkpoint file; a
    path or a URI such as file:// or s3://) in a format that loads without pat_ray
    (state_dict: with pat_ray, below). The file is checked before it is kept: loaded back, it
    must give the checkpoint's outputs within 1e-5 on a random batch of another size than the
    one traced; a model the format cannot hold (control flow on the data) is an error, and no
    file is written. The batch dimension stays free in every format.

    \b
    state_dict   the weights, plus FILE.json (base model, parameters, input shape, architecture);
                 torch.load(FILE, weights_only=True), and pat_ray.load_checkpoint(FILE) rebuilds the module
    torchscript  torch.jit.load(FILE)
    pt2          torch.export.load(FILE).module()          (the default)
    onnx         onnxruntime.InferenceSession(FILE)         (pip install "pat-ray[onnx]")

    \b
    pat-ray export runs/digits/latest
    pat-ray export runs/digits/latest --format onnx --out digits.onnx
    """
    from pat_ray.export import export_model
    from pat_ray.training.checkpoint import sidecar

    where = Location.given(run)
    checkpoint = where if where.is_file() else where / LAST
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{run}: no checkpoint there ({checkpoint}); give a run folder or a checkpoint file")
    written = export_model(checkpoint.local_path if checkpoint.is_local else checkpoint.uri, fmt, out)
    click.echo(f"{fmt}: {written}")
    if fmt == "state_dict":
        click.echo(f"architecture: {sidecar(written)}")
