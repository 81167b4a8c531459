"""Your own model and data: by import path in a config, as objects in Python, and checkpoints
that come home in a fresh process, with nothing imported that the user did not trust."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.utils.data import TensorDataset

import pat_ray
from _helpers import configured
from pat_ray.cli import main
from pat_ray.errors import ConfigError, TargetError, UntrustedCodeError
from pat_ray.plugins import user_code
from pat_ray.plugins.recipes import as_bundle
from pat_ray.plugins.user_code import resolve, split_target

ROOT = Path(__file__).parents[1]
NETS = """
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes, in_channels=1, width=8):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))
"""


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package of the user's own in a folder of its own (``mynets.nets:TinyNet``), untrusted."""
    (tmp_path / "mynets").mkdir()
    (tmp_path / "mynets" / "__init__.py").write_text("")
    (tmp_path / "mynets" / "nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(user_code, "_trusted", set())
    monkeypatch.delenv(user_code.TRUST_ENV, raising=False)
    yield tmp_path
    for name in [m for m in sys.modules if m == "mynets" or m.startswith("mynets.")]:
        sys.modules.pop(name)


@pytest.mark.parametrize(
    "target, parts",
    [("a.b:C", ("a.b", "C")), ("a.b.C", ("a.b", "C")), ("a:C.make", ("a", "C.make"))],
)
def test_an_import_path_is_module_and_name(target, parts):
    assert split_target(target) == parts


@pytest.mark.parametrize("target", ["nonsense", "a b:C", "a:", ":C", "a:1x"])
def test_a_malformed_import_path_is_one_line_naming_it(target):
    with pytest.raises(TargetError, match="is not an import path: write module:name"):
        resolve(target, "model.target")


def test_nothing_is_imported_from_a_module_nobody_trusted(package):
    with pytest.raises(UntrustedCodeError, match=r"model.target: 'mynets.nets:TinyNet' is in module 'mynets.nets'"):
        resolve("mynets.nets:TinyNet", "model.target")
    assert "mynets.nets" not in sys.modules
    with pytest.raises(UntrustedCodeError, match=r"add --trust os \(Python: pat_ray.trust\('os'\)"):
        resolve("os:system", "model.target")
    pat_ray.trust("mynets")
    assert resolve("mynets.nets:TinyNet", "model.target").__name__ == "TinyNet"


def test_a_missing_module_or_name_is_one_line_naming_the_path(package):
    pat_ray.trust("mynets")
    with pytest.raises(TargetError, match=r"model.target: cannot import 'mynets.nope' for 'mynets.nope:X'"):
        resolve("mynets.nope:X", "model.target")
    with pytest.raises(TargetError, match=r"module 'mynets.nets' has no 'Nope' \(from 'mynets.nets:Nope'\)"):
        resolve("mynets.nets:Nope", "model.target")


def test_a_config_names_its_model_by_import_path_and_validation_checks_it(package, tmp_path):
    target = {"name": None, "target": "mynets.nets:TinyNet", "params": {"width": 6}}
    with pytest.raises(ConfigError, match="which pat_ray imports only when you trust it"):
        configured(model=target)
    pat_ray.trust("mynets")
    config = configured(model=target, output_dir=tmp_path, training={"epochs": 3}, tracking={"mlflow": False})
    assert config.model.name is None and config.model.target == "mynets.nets:TinyNet"
    with pytest.raises(ConfigError, match="model.params: mynets.nets:TinyNet does not take these params"):
        configured(model={"name": None, "target": "mynets.nets:TinyNet", "params": {"depth": 3}})
    with pytest.raises(ConfigError, match=r"give name \('cifar_resnet20'\) or target"):
        configured(model={"name": "cifar_resnet20", "target": "mynets.nets:TinyNet"})
    result = pat_ray.run(config, local=True, quiet=True)
    assert result.at_budget
    model, ckpt = pat_ray.load_checkpoint(result.checkpoint)
    assert ckpt.model_source == "import" and ckpt.model_name == "mynets.nets:TinyNet"
    assert ckpt.model_params == {"width": 6, "num_classes": 10, "in_channels": 1}  # what the data supplied
    assert model.conv.out_channels < 6


def test_a_checkpoint_comes_home_in_a_fresh_process_only_with_trust(package, tmp_path):
    pat_ray.trust("mynets")
    config = configured(
        model={"name": None, "target": "mynets.nets:TinyNet"},
        output_dir=tmp_path / "runs",
        training={"epochs": 3},
        tracking={"mlflow": False},
    )
    checkpoint = pat_ray.run(config, local=True, quiet=True).checkpoint
    (package / "mynets" / "__init__.py").write_text("open('imported.txt', 'w').write('side effect')\n")
    env = {"PYTHONPATH": str(package), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    refused = subprocess.run(
        [sys.executable, "-m", "pat_ray.cli", "export", str(checkpoint), "--out", str(tmp_path / "m.pt2")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "module 'mynets.nets', which pat_ray imports only when you trust it: add --trust mynets" in refused.stderr
    assert not (tmp_path / "imported.txt").exists()  # the module never ran
    trusted = subprocess.run(
        [
            sys.executable,
            "-m",
            "pat_ray.cli",
            "export",
            str(checkpoint),
            "--out",
            str(tmp_path / "m.pt2"),
            "--trust",
            "mynets",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert trusted.returncode == 0, trusted.stderr
    assert (tmp_path / "m.pt2").is_file() and (tmp_path / "imported.txt").exists()


def test_objects_handed_over_in_python_train_and_come_home_when_given_again(tmp_path):
    class Local(nn.Module):  # no import path: a notebook's class
        def __init__(self, num_classes):
            super().__init__()
            self.conv, self.head = nn.Conv2d(1, 8, 3), nn.Linear(8, num_classes)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).mean((2, 3)))

    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(96, 1, 8, 8, generator=generator), torch.randint(0, 3, (96,), generator=generator)
    data = (TensorDataset(images[:64], labels[:64]), TensorDataset(images[64:], labels[64:]))
    config = configured(
        output_dir=tmp_path,
        training={"epochs": 4},
        pruning={"interval": 1},
        tracking={"mlflow": False},
        data={"batch_size": 16},
    )
    result = pat_ray.run(config, local=True, quiet=True, model=Local, data=data)
    assert result.at_budget and result.history[-1].flops_kept <= 0.5 + pat_ray.BUDGET_TOLERANCE
    with pytest.raises(
        pat_ray.CheckpointError, match=r"handed over in Python .*load_checkpoint\(path, model=TheClass\)"
    ):
        pat_ray.load_checkpoint(result.checkpoint)
    model, ckpt = pat_ray.load_checkpoint(result.checkpoint, model=Local)
    assert ckpt.model_source == "object" and ckpt.model_params == {"num_classes": 3}
    assert model(images[:2]).shape == (2, 3)


def test_a_pair_of_datasets_says_its_classes_and_shape_or_is_told():
    images, labels = torch.zeros(10, 2, 5, 5), torch.arange(10) % 4
    bundle = as_bundle((TensorDataset(images, labels), TensorDataset(images, labels)), None, None, "data.target")
    assert bundle.num_classes == 4 and bundle.input_shape == (2, 5, 5)
    told = as_bundle((TensorDataset(images, labels), TensorDataset(images, labels)), 7, [2, 5, 5], "data.target")
    assert told.num_classes == 7
    with pytest.raises(TypeError, match="returns a pat_ray.sdk.DataBundle or \\(train, val\\) datasets, not dict"):
        as_bundle({"train": 1}, None, None, "data.target")


def test_a_model_reading_other_channels_than_the_data_is_refused_naming_both(tmp_path):
    result = CliRunner().invoke(main, ["validate", str(ROOT / "pipelines" / "digits.yaml"), "model.name=resnet18"])
    assert result.exit_code == 2, result.output
    assert "model 'resnet18' reads 3 input channels" in result.output and "the data gives 1" in result.output


class _SizedNet(nn.Module):
    """A model that, like a ViT, is built for one image size."""

    def __init__(self, num_classes: int, image_size: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.head = nn.Linear(4 * image_size * image_size, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


def test_square_images_give_their_size_to_a_model_that_takes_image_size(tmp_path):
    """The built-in ViT on the 8x8 digits (its default is 32x32: a position table of 65 rows for 5
    tokens), and a user's model; explicit params win, non-square images offer no size."""
    from pat_ray.plugins.recipes import ModelRecipe, offered_by
    from pat_ray.sdk import DataBundle
    from pat_ray.training.setup import build_run

    config = configured(model={"name": "vit_small_images"}, training={"epochs": 2}, output_dir=tmp_path)
    built = build_run(config)
    assert built.model.pos_embed.shape[1] == (8 // 4) ** 2 + 1 and built.recipe.params["image_size"] == 8
    pair = TensorDataset(torch.zeros(4, 1, 6, 6), torch.arange(4))
    square, wide = DataBundle(pair, pair, 4, (1, 6, 6)), DataBundle(pair, pair, 4, (1, 6, 9))
    model, recipe = ModelRecipe.of(None, None, {}, _SizedNet).build("model", _SizedNet, **offered_by(square))
    assert model.head.in_features == 4 * 6 * 6
    assert recipe.params == {"num_classes": 4, "image_size": 6, "in_channels": 1}
    model, _ = ModelRecipe.of(None, None, {"image_size": 5}, _SizedNet).build("model", _SizedNet, **offered_by(square))
    assert model.head.in_features == 4 * 5 * 5
    assert "image_size" not in offered_by(wide)


def test_a_model_that_does_not_run_on_the_data_is_named_with_the_input_shape():
    """Not "torch.fx could not trace": the model fails on the example itself, a mismatch the
    user fixes in the config; torch's lines below its message are left out."""
    with pytest.raises(pat_ray.UnsupportedModelError) as caught:
        pat_ray.prune(_SizedNet(10, image_size=32, in_channels=1), torch.zeros(2, 1, 8, 8))
    message = str(caught.value)
    assert message.startswith("_SizedNet does not run on an input of shape (1, 1, 8, 8): ")
    assert "mat1 and mat2 shapes cannot be multiplied" in message and "\n" not in message


def test_the_own_model_pipeline_runs_with_its_module_trusted(tmp_path):
    pipeline = str(ROOT / "pipelines" / "digits_own_model.yaml")
    refused = CliRunner().invoke(main, ["validate", pipeline])
    assert refused.exit_code == 2 and "--trust examples" in refused.output
    args = ["run", pipeline, "--trust", "examples", "--local", f"output_dir={tmp_path}", "tracking.mlflow=false"]
    ran = CliRunner().invoke(main, args)
    assert ran.exit_code == 0, ran.output
    assert "examples.small_cnn:SmallCNN" in (tmp_path / "digits-own-model" / "latest" / "config.yaml").read_text()


NOTEBOOK = textwrap.dedent(
    """
    import pat_ray
    from examples.small_cnn import SmallCNN
    from examples.digits_data import make

    overrides = ["training.epochs=6", "tracking.mlflow=false", "output_dir={output}"]
    config = pat_ray.load_config("pipelines/digits.yaml", overrides=overrides)
    result = pat_ray.run(config, model=SmallCNN, data=make(), local=True, quiet=True)
    print(result.config.model.target, result.status())
    """
)


def test_a_class_with_an_import_path_is_recorded_by_it(tmp_path):
    script = NOTEBOOK.replace("{output}", str(tmp_path))
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.split()[-2:] == ["examples.small_cnn:SmallCNN", "finished"]


FAULTY = """
import torch
from torch import nn
from torch.utils.data import TensorDataset


class PairNet(nn.Module):
    def __init__(self, num_classes, in_channels=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3))), 1


class Broken(nn.Module):
    def __init__(self, num_classes):
        raise RuntimeError("weights file missing")


def one_dataset():
    return TensorDataset(torch.zeros(10, 1, 8, 8), torch.zeros(10, dtype=torch.long))


def float_labels():
    pair = TensorDataset(torch.randn(400, 1, 8, 8), torch.rand(400))
    return pair, pair


def raises():
    raise RuntimeError("disk on fire")
"""


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["model.name=null", "model.target=faulty:PairNet"],
            "returns a tuple of 2 (a float32 tensor of shape (1, 10), an int)",
        ),
        (
            ["model.name=null", "model.target=faulty:Broken"],
            "'faulty:Broken' raised RuntimeError: weights file missing",
        ),
        (
            ["data.name=null", "data.target=faulty:one_dataset"],
            "returns a pat_ray.sdk.DataBundle or (train, val) datasets",
        ),
        (["data.name=null", "data.target=faulty:float_labels"], "the data's labels are a float32 tensor of shape ()"),
        (
            ["data.name=null", "data.target=faulty:raises"],
            "data.target 'faulty:raises' raised RuntimeError: disk on fire",
        ),
    ],
    ids=["model returns a tuple", "model raises", "one dataset", "float labels", "data raises"],
)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_the_users_own_code_failing_is_their_error_named_not_an_internal_one(
    tmp_path, monkeypatch, overrides, message, command
):
    """Exit 2 and one line naming what the code did, before any training: a model or data
    factory that raises, returns the wrong thing, a model whose output is not one tensor of
    logits, labels that are not classes."""
    (tmp_path / "faulty.py").write_text(FAULTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = [command, "--trust", "faulty", *overrides, "training.epochs=50", f"output_dir={tmp_path / 'runs'}"]
    result = CliRunner().invoke(main, [*args, *(["--local", "tracking.mlflow=false"] if command == "run" else [])])
    sys.modules.pop("faulty", None)
    assert result.exit_code == 2, result.output
    assert message in result.output and "internal error" not in result.output, result.output
    assert not list((tmp_path / "runs").rglob("last.pt")), "nothing trained"
