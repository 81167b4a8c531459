"""Values that are not what they look like: run names a shell or store would read as something
else, YAML whose aliases expand past any sane size, and checkpoints from a newer pat_ray."""

from __future__ import annotations

import pytest
import torch
import yaml
from click.testing import CliRunner

from _helpers import configured
from pat_ray.cli import main
from pat_ray.config import FixedStart
from pat_ray.errors import ConfigError


@pytest.mark.parametrize(
    "name", ["${HOME}", "$USER-run", "run\x07bell", "tab\there", "new\nline", "a/b", "..", "...", "", "x" * 129, "é"]
)
def test_a_run_name_must_be_a_plain_folder_name(name):
    with pytest.raises(ConfigError, match="name: .* is not a plain folder name: use letters, digits"):
        configured(name=name)


@pytest.mark.parametrize("name", ["digits", "fmnist_cpu-long.v2", "R50", "a.b"])
def test_plain_names_pass(name):
    assert configured(name=name).name == name


def test_yaml_aliases_that_expand_past_a_sane_size_are_refused_while_loading(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):  # 10**9 values once expanded, from nine lines
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("model:\n  params:\n" + "\n".join(f"    {line}" for line in lines) + "\n")
    for command in (["validate", str(bomb)], ["run", str(bomb), "--local"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, result.output
        assert "expands to more than 100,000 values" in result.output and "Traceback" not in result.output
    small = tmp_path / "ok.yaml"
    small.write_text("training: &x {epochs: 5}\noracle: {start_epochs: [0, 1]}\n")  # an ordinary alias still works
    result = CliRunner().invoke(main, ["validate", str(small)])
    assert result.exit_code == 0 and yaml.safe_load(result.output.split("\n", 1)[1])["training"]["epochs"] == 5


def test_a_checkpoint_from_a_newer_format_names_its_version_and_the_pat_ray_needed(tmp_path):
    import pat_ray
    from pat_ray.errors import CheckpointError
    from pat_ray.training.checkpoint import read_checkpoint

    result = pat_ray.run(
        configured(
            output_dir=tmp_path / "runs",
            training={"epochs": 2},
            start=FixedStart(epoch=1),
            pruning={"interval": 5},  # the 3 steps fit the last epoch
            tracking={"mlflow": False},
        ),
        local=True,
        quiet=True,
    )
    data = torch.load(result.checkpoint, weights_only=True)
    assert data["pat_ray_version"] == pat_ray.__version__
    data.update(format_version=99, pat_ray_version="9.1.0")
    torch.save(data, tmp_path / "newer.pt")
    with pytest.raises(
        CheckpointError,
        match=r"written by pat_ray 9.1.0 \(checkpoint format 99\); this pat_ray .* "
        r"reads format 1: upgrade pat_ray to 9.1.0 or newer",
    ):
        read_checkpoint(tmp_path / "newer.pt")
    del data["pat_ray_version"]
    torch.save(data, tmp_path / "newer-unknown.pt")
    with pytest.raises(CheckpointError, match=r"written by a newer pat_ray \(checkpoint format 99\)"):
        read_checkpoint(tmp_path / "newer-unknown.pt")
