"""``pat-ray export``: every format loads in a Python that cannot import pat_ray and gives the
checkpoint's outputs; a model a format cannot hold is refused with no file left behind."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import pat_ray
from _helpers import configured, without_pat_ray
from pat_ray.cli import main
from pat_ray.config import FixedStart
from pat_ray.errors import ExportError
from pat_ray.export import ATOL, FORMATS, RTOL, export_model

# what each format's own runtime needs to run a batch: no pat_ray import anywhere
LOADERS = {
    "state_dict": "",  # checked on its tensors: building the module needs the model's code
    "torchscript": "model = torch.jit.load(path)",
    "pt2": "model = torch.export.load(path).module()",
    "onnx": textwrap.dedent(
        """
        import onnxruntime
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        model = lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
        """
    ),
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished, pruned run (digits, pruned after epoch 1 to half its FLOPs)."""
    folder = tmp_path_factory.mktemp("export")
    config = configured(
        output_dir=folder / "runs", training={"epochs": 3}, start=FixedStart(epoch=1), tracking={"mlflow": False}
    )
    result = pat_ray.run(config, local=True, quiet=True)
    assert result.flops_kept < 0.6
    return Path(str(result.checkpoint)).parent


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_loads_without_pat_ray_and_gives_the_checkpoints_outputs(fmt, finished, tmp_path):
    out = tmp_path / f"model.{fmt}"
    result = CliRunner().invoke(main, ["export", str(finished.parent / "latest"), "--format", fmt, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and out.is_file()
    model, ckpt = pat_ray.load_checkpoint(finished / "last.pt")
    batch = torch.randn(5, *ckpt.input_shape[1:])  # a batch size neither the trace nor the check used
    torch.save(batch, tmp_path / "batch.pt")
    if fmt == "state_dict":
        script = f"import torch\ntorch.save(torch.load({str(out)!r}, weights_only=True), 'loaded.pt')\n"
    else:
        script = f"import torch\npath = {str(out)!r}\n{LOADERS[fmt]}\n"
        script += "with torch.no_grad():\n    torch.save(model(torch.load('batch.pt')), 'loaded.pt')\n"
    ran = without_pat_ray(script, tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    loaded = torch.load(tmp_path / "loaded.pt", weights_only=True)
    if fmt == "state_dict":
        assert loaded.keys() == model.state_dict().keys()
        assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
        sidecar = out.with_name(out.name + ".json")  # FILE.json, as the README and --help say
        assert sidecar.is_file() and "architecture" in sidecar.read_text()
        assert f"architecture: {sidecar}" in result.output
        rebuilt, _ = pat_ray.load_checkpoint(out)  # the pruned widths back: pat_ray reads FILE and FILE.json
        with torch.no_grad():
            assert torch.equal(rebuilt.eval()(batch), model.eval()(batch))
        return
    with torch.no_grad():
        expected = model.eval()(batch)
    assert loaded.shape == expected.shape
    assert torch.allclose(loaded, expected, atol=ATOL, rtol=RTOL), (loaded - expected).abs().max()


def test_the_default_is_pt2_beside_the_checkpoint(finished):
    result = CliRunner().invoke(main, ["export", str(finished)])
    assert result.exit_code == 0, result.output
    assert (finished / "last.pt2").is_file() and str(finished / "last.pt2") in result.output


class _Noisy(nn.Module):
    """A forward that depends on more than its input: no file can reproduce its outputs."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3))) + torch.rand(1)


def test_a_model_a_format_cannot_hold_is_refused_and_no_file_is_left(plugins, tmp_path):
    class Models:
        @pat_ray.hookimpl
        def pat_ray_register_models(self, register):
            register("noisy", _Noisy)

    plugins(Models(), name="noisy-model")
    model, example = _Noisy(), torch.zeros(1, 1, 8, 8)
    architecture = pat_ray.prune(model, example, budget=0.5)
    pat_ray.save_checkpoint(tmp_path / "noisy.pt", model, "noisy", architecture, input_shape=(1, 1, 8, 8))
    for fmt in FORMATS:
        out = tmp_path / "out" / f"noisy.{fmt}"
        with pytest.raises(ExportError, match=f"{fmt} cannot hold this model"):
            export_model(tmp_path / "noisy.pt", fmt, out)
        assert not out.exists() and not out.with_name(out.name + ".json").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == []  # no temp file either


def test_a_run_folder_is_taken_as_a_path_or_a_file_uri(finished, tmp_path):
    uri = f"file://{finished.parent / 'latest'}"
    exported = CliRunner().invoke(main, ["export", uri, "--format", "state_dict", "--out", str(tmp_path / "m.pt")])
    assert exported.exit_code == 0, exported.output
    listed = CliRunner().invoke(main, ["runs", f"file://{finished.parents[1]}", "--json"])
    assert listed.exit_code == 0 and json.loads(listed.output.splitlines()[0])["status"] == "finished", listed.output


def test_bad_export_requests_are_one_line_errors(finished, tmp_path):
    missing = CliRunner().invoke(main, ["export", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "nowhere" in missing.output and "Traceback" not in missing.output
    bad_format = CliRunner().invoke(main, ["export", str(finished), "--format", "tflite"])
    assert bad_format.exit_code == 2 and "tflite" in bad_format.output and "pt2" in bad_format.output
    folder_out = CliRunner().invoke(main, ["export", str(finished), "--out", str(tmp_path)])
    assert folder_out.exit_code == 2 and "is a folder" in folder_out.output


def test_onnx_without_its_extra_says_what_to_install(finished, tmp_path):
    script = (
        "import sys\nsys.modules['onnxscript'] = None\nfrom pat_ray.cli import main\n"
        f"main(['export', {str(finished)!r}, '--format', 'onnx', '--out', {str(tmp_path / 'm.onnx')!r}])\n"
    )
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 2, ran.stderr
    assert 'pip install "pat-ray[onnx]"' in ran.stderr and "Traceback" not in ran.stderr
    assert not (tmp_path / "m.onnx").exists()
