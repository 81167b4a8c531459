"""Bad inputs end as one clear line: the right exit code, the file / field / plugin named,
no traceback, and nothing written earlier lost or changed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

import pat_ray
from pat_ray.cli import main
from pat_ray.core.architecture import Architecture
from pat_ray.errors import CheckpointError
from pat_ray.models.cifar_resnet import CifarResNet
from pat_ray.training.checkpoint import read_checkpoint, save_checkpoint

TINY = {
    "training": {"epochs": 3, "schedule": {"warmup_epochs": 0}},
    "start": {"kind": "fixed", "epoch": 1},
    "tracking": {"mlflow": False},  # no test here checks it, and logging a run is most of a short run's time
}


def merged(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        nested = isinstance(value, dict) and key != "start"  # a start policy is replaced whole
        out[key] = merged(out.get(key, {}), value) if nested else value
    return out


def write_config(folder: Path, overrides: dict | None = None, name: str = "bad.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(merged({"output_dir": str(folder / "runs"), **TINY}, overrides or {})))
    return path


def cli(*args: str):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- config files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\xff\xfe\x00binary\x89PNG", "not UTF-8"),
        (b"training: [unclosed", "not valid YAML"),
        (b"- a\n- list\n", "valid dictionary"),
        (b"name: digits\nname: again\n", "digits"),  # duplicate keys: YAML keeps the last, still valid
    ],
    ids=["binary", "bad-yaml", "top-level-list", "duplicate-key"],
)
def test_unreadable_config_files(tmp_path, content, message):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    result = cli("validate", path)
    if message == "digits":
        assert result.exit_code == 0
        return
    assert result.exit_code == 2 and str(path) in result.output and message in result.output


def test_a_folder_given_as_the_config(tmp_path):
    result = cli("validate", tmp_path)
    assert result.exit_code == 2 and "is a folder" in result.output and str(tmp_path) in result.output


def test_a_missing_config(tmp_path):
    result = cli("run", tmp_path / "nope.yaml", "--local")
    assert result.exit_code == 2 and "nope.yaml" in result.output and "does not exist" in result.output


# ---- config fields -------------------------------------------------------------------------

FIELD_CASES = [
    ({"trainig": {}}, "trainig"),
    ({"training": {"epoch": 3}}, "training.epoch"),
    ({"training": {"optimizer": {"lr": float("inf")}}}, "training.optimizer.lr"),
    ({"training": {"optimizer": {"weight_decay": float("inf")}}}, "training.optimizer.weight_decay"),
    ({"training": {"optimizer": {"lr": float("nan")}}}, "training.optimizer.lr"),
    ({"training": {"optimizer": {"momentum": 1.0}}}, "training.optimizer.momentum"),
    ({"training": {"label_smoothing": float("-inf")}}, "training.label_smoothing"),
    ({"pruning": {"budget": {"fraction": 0}}}, "pruning.budget.fraction"),
    ({"pruning": {"budget": {"fraction": 1.5}}}, "pruning.budget.fraction"),
    ({"pruning": {"budget": {"fraction": float("nan")}}}, "pruning.budget.fraction"),
    ({"name": "../../escape"}, "plain folder name"),
    ({"name": "a/b"}, "plain folder name"),
    ({"name": ""}, "plain folder name"),
    ({"model": {"name": "resnet9000"}}, "model.name"),
    ({"model": {"params": {"in_channels": 1, "widht": 3}}}, "widht"),
    ({"model": {"params": {"in_channels": 1, "num_classes": 3}}}, "num_classes"),
    ({"data": {"name": "imagenet22k"}}, "data.name"),
    ({"data": {"params": {"flip": True}}}, "flip"),
    ({"data": {"params": {"root": "/no/such/folder"}}}, "/no/such/folder"),
    ({"data": {"batch_size": -1}}, "data.batch_size"),
    ({"pruning": {"criterion": {"name": "magnitude", "params": {"q": 3}}}}, "accepts"),
    ({"pruning": {"criterion": {"name": "random"}}}, "pruning.criterion.name"),
    ({"pruning": {"criterion": {"name": "magnitude", "params": {"p": 3}}}}, "p must be 1 or 2"),
    ({"pruning": {"criterion": {"name": "magnitude", "params": {"normalize": "layer"}}}}, "group_mean, filter_size"),
    ({"pruning": {"backend": "scissors"}}, "pruning.backend"),
    ({"pruning": {"budget": {"measure": "watts"}}}, "pruning.budget.measure"),
    ({"pruning": {"budget": {"latency_table": "/no/table.json", "measure": "latency"}}}, "/no/table.json"),
    ({"start": {"kind": "epi", "similarity": "cosine"}}, "start.epi.similarity"),
    ({"start": {"kind": "sometimes"}}, "start"),
    ({"start": {"kind": "fixed", "epoch": 3}}, "start.epoch"),
    ({"training": {"epochs": 0}}, "training.epochs"),
    ({"training": {"schedule": {"warmup_epochs": 5}}}, "warmup_epochs"),
    ({"training": {"schedule": {"kind": "step", "step_epochs": [7]}}}, "step_epochs"),
    ({"oracle": {"start_epochs": [0, 9]}}, "oracle.start_epochs"),
    ({"training": {"device": "tpu"}}, "training.device"),
    ({"scaling": {"num_workers": 0}}, "scaling.num_workers"),
]


@pytest.mark.parametrize(
    "overrides, named", FIELD_CASES, ids=[f"{i}-{named}" for i, (_, named) in enumerate(FIELD_CASES)]
)
def test_bad_fields_are_named_by_validate_and_run(tmp_path, overrides, named):
    path = write_config(tmp_path, overrides)
    for args in (["validate", path], ["run", path, "--local"]):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        assert named in result.output and str(path) in result.output
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("a file")
    result = cli("validate", write_config(tmp_path, {"output_dir": str(tmp_path / "taken")}))
    assert result.exit_code == 2 and "output_dir" in result.output and "is a file" in result.output


def test_output_dir_below_a_file_fails_before_the_first_epoch(tmp_path):
    (tmp_path / "taken").write_text("a file")
    result = cli("run", write_config(tmp_path, {"output_dir": str(tmp_path / "taken" / "runs")}), "--local")
    assert result.exit_code == 2 and "output_dir" in result.output and "epoch" not in result.output
    assert (tmp_path / "taken").read_text() == "a file"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
@pytest.mark.parametrize(
    "training, named",
    [({"device": "cuda"}, "training.device"), ({"precision": "fp16"}, "training.precision")],
)
def test_gpu_settings_without_a_gpu_fail_at_validation(tmp_path, training, named):
    path = write_config(tmp_path, {"training": training})
    for args in (["validate", path], ["run", path, "--local"]):
        result = cli(*args)
        assert result.exit_code == 2 and named in result.output and "CUDA" in result.output


# ---- checkpoints ---------------------------------------------------------------------------


@pytest.fixture()
def good_checkpoint(tmp_path) -> Path:
    model, path = CifarResNet(20, num_classes=4), tmp_path / "good.pt"
    arch = Architecture.full({"conv1": 16})
    save_checkpoint(path, model, "cifar_resnet20", arch, (1, 3, 16, 16), {"num_classes": 4})
    return path


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_with_a_code_payload_is_refused_and_nothing_runs(tmp_path):
    marker, path = tmp_path / "payload-ran", tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model_name": "cifar_resnet20", "extra": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="evil.pt.*could run code"):
        pat_ray.load_checkpoint(path)
    assert not marker.exists()
    result = cli("run", write_config(tmp_path), "--local", "--resume")  # no run there yet: nothing to resume
    assert result.exit_code == 2


def damage(kind: str, good: Path, folder: Path) -> Path:
    path = folder / f"{kind}.pt"
    data = good.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "state-dict":
        torch.save(CifarResNet(20, num_classes=4).state_dict(), path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "other-model":
        ckpt = torch.load(good, weights_only=True)
        torch.save({**ckpt, "model_name": "cifar_resnet32"}, path)
    elif kind == "unknown-model":
        ckpt = torch.load(good, weights_only=True)
        torch.save({**ckpt, "model_name": "not_a_model"}, path)
    elif kind == "bad-architecture":
        ckpt = torch.load(good, weights_only=True)
        torch.save({**ckpt, "architecture": {"sizes": {"conv1": 16}, "kept": {"conv1": [99]}}}, path)
    elif kind == "missing-field":
        ckpt = torch.load(good, weights_only=True)
        del ckpt["state_dict"]
        torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("truncated", "damaged"),
        ("empty", "empty"),
        ("random", "damaged"),
        ("state-dict", "plain state dict"),
        ("folder", "folder"),
        ("other-model", "do not fit"),
        ("unknown-model", "not_a_model"),
        ("bad-architecture", "architecture"),
        ("missing-field", "state_dict"),
    ],
)
def test_damaged_checkpoints_are_one_error_naming_the_file(tmp_path, good_checkpoint, kind, message):
    path = damage(kind, good_checkpoint, tmp_path)
    with pytest.raises(CheckpointError, match=message) as err:
        pat_ray.load_checkpoint(path)
    assert str(path) in str(err.value)


def test_checkpoints_get_the_users_umask(tmp_path, good_checkpoint):
    assert good_checkpoint.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- runs: never overwritten, resumable ----------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("finished")
    result = cli("run", write_config(folder, name="config.yaml"), "--local")
    assert result.exit_code == 0, result.output
    return folder


def test_a_second_run_with_the_same_name_gets_its_own_folder_and_changes_nothing(finished_run):
    named = finished_run / "runs" / "digits"
    (first,) = [p for p in named.iterdir() if not p.is_symlink()]
    before = snapshot(first)
    result = cli("run", finished_run / "config.yaml", "--local")
    assert result.exit_code == 0, result.output
    second = (named / "latest").resolve()
    assert second != first and second.parent == named and (second / "last.pt").is_file()
    assert str(second / "last.pt") in result.output
    assert snapshot(first) == before


def _copied_run(finished_run: Path, tmp_path: Path) -> Path:
    """A version folder holding the finished run's files, for resume tests that damage them."""
    run_dir = tmp_path / "runs" / "digits" / "20260101-000000"
    run_dir.mkdir(parents=True)
    source = (finished_run / "runs" / "digits" / "latest").resolve()
    for name in ("last.pt", "previous.pt", "history.json"):
        (run_dir / name).write_bytes((source / name).read_bytes())
    return run_dir


def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(finished_run, tmp_path):
    run_dir = _copied_run(finished_run, tmp_path)
    (run_dir / "last.pt").write_bytes(b"\x00" * 100)  # the newest file is damaged
    result = cli("run", write_config(tmp_path, name="config.yaml"), "--local", "--resume")
    assert result.exit_code == 0, result.output
    assert "last.pt" in result.output and "previous.pt" in result.output  # says so
    assert read_checkpoint(run_dir / "last.pt").extra["epoch"] == 3
    assert [h["epoch"] for h in read_checkpoint(run_dir / "last.pt").extra["history"]] == [1, 2, 3]


def test_resume_with_every_checkpoint_damaged_names_the_file(tmp_path):
    run_dir = tmp_path / "runs" / "digits" / "20260101-000000"
    run_dir.mkdir(parents=True)
    (run_dir / "last.pt").write_bytes(b"garbage")
    result = cli("run", write_config(tmp_path), "--local", "--resume")
    assert result.exit_code == 2 and str(run_dir / "last.pt") in result.output
    assert (run_dir / "last.pt").read_bytes() == b"garbage"


def test_resume_of_a_version_that_does_not_exist_names_the_ones_there(finished_run):
    result = cli("run", finished_run / "config.yaml", "--local", "--resume", "19990101-000000")
    assert result.exit_code == 2 and "19990101-000000" in result.output
    assert (finished_run / "runs" / "digits" / "latest").resolve().name in result.output


class _StopAfter:
    """Interrupts the run after an epoch, as Ctrl-C would (after that epoch's checkpoint)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    @pat_ray.hookimpl
    def pat_ray_on_epoch_end(self, epoch, metrics):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def test_an_interrupted_run_resumes_to_the_same_result_with_every_epoch_once(plugins, tmp_path):
    overrides = {
        "training": {"epochs": 5},
        "start": {"kind": "epi", "window": 1, "patience": 1, "tau": 0.5},
        "tracking": {"mlflow": False},
    }
    whole = pat_ray.run(
        pat_ray.load_config(write_config(tmp_path, {**overrides, "name": "whole"})), local=True, quiet=True
    )
    config = pat_ray.load_config(write_config(tmp_path, {**overrides, "name": "cut"}))
    plugins(_StopAfter(2), name="stop-after-2")
    result = CliRunner().invoke(main, ["run", str(tmp_path / "bad.yaml"), "--local"])
    assert result.exit_code == 130 and "--resume" in result.output and "Traceback" not in result.output
    assert read_checkpoint(tmp_path / "runs" / "cut" / "latest" / "last.pt").extra["epoch"] == 2
    resumed = pat_ray.run(config, local=True, quiet=True, resume=True)
    assert [h.epoch for h in resumed.history] == [1, 2, 3, 4, 5]
    assert resumed.trigger_epoch == whole.trigger_epoch
    assert resumed.architecture == whole.architecture
    for a, b in zip(resumed.history, whole.history):
        assert a.val_acc == pytest.approx(b.val_acc, abs=1e-6)


# ---- plugins -------------------------------------------------------------------------------


def _installed_plugin(folder: Path, source: str) -> dict[str, str]:
    """A plugin distribution on sys.path (module + dist-info with an entry point)."""
    (folder / "bad_plugin_mod.py").write_text(textwrap.dedent(source))
    info = folder / "bad_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[pat_ray]\nbad = bad_plugin_mod\n")
    return {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.mark.parametrize(
    "source, message",
    [
        (
            "import pat_ray\n@pat_ray.hookimpl\ndef pat_ray_register_critera(register):\n    pass\n",
            "pat_ray_register_critera",
        ),
        ("raise ImportError('missing dependency frobnicate')\n", "frobnicate"),
        ("import pat_ray\n@pat_ray.hookimpl\ndef pat_ray_register_models(register):\n    1 / 0\n", "ZeroDivision"),
    ],
    ids=["misspelled-hook", "import-fails", "register-raises"],
)
def test_a_broken_installed_plugin_is_named_without_a_traceback(tmp_path, source, message):
    env = _installed_plugin(tmp_path, source)
    done = subprocess.run(
        [sys.executable, "-m", "pat_ray.cli", "plugins"], env=env, capture_output=True, text=True, timeout=120
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output and "bad-plugin" in output and message in output


# ---- other commands ------------------------------------------------------------------------


def test_report_of_a_folder_that_is_no_sweep(tmp_path):
    result = cli("report", tmp_path)
    assert result.exit_code == 2 and str(tmp_path) in result.output


@pytest.mark.parametrize("content", ["{not json", '{"name": 1}', "[]"])
def test_report_of_a_malformed_oracle_json(tmp_path, content):
    (tmp_path / "oracle.json").write_text(content)
    result = cli("report", tmp_path)
    assert result.exit_code == 2 and "oracle.json" in result.output


def test_oracle_resume_with_no_sweep_of_that_name_says_so(tmp_path):
    result = cli("oracle", "--resume", "--output-dir", tmp_path)
    assert result.exit_code == 2 and str(tmp_path / "oracle" / "digits") in result.output and "nothing" in result.output


def test_unknown_plugin_kind_is_a_usage_error():
    result = cli("plugins", "--kind", "bogus")
    assert result.exit_code == 2 and "bogus" in result.output


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(main, ["--debug", "report", str(tmp_path)])
    assert isinstance(result.exception, FileNotFoundError)
