"""Config validation and the CLI's handling of bad input: clear errors, no tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pat_ray.cli import main
from pat_ray.config import Config, config_from_dict, load_config, oracle_grid
from pat_ray.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def errors_for(data) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, "cfg.yaml")
    return info.value.errors


def test_shipped_digits_pipeline_is_the_embedded_default():
    assert load_config(ROOT / "pipelines" / "digits.yaml") == Config()


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"trainig": {}}, "trainig: Extra inputs are not permitted"),
        ({"training": {"epochs": "many"}}, "training.epochs: Input should be a valid integer"),
        ({"model": {"name": "resnet9000"}}, "model.name: unknown model 'resnet9000'; registered:"),
        (
            {"pruning": {"criterion": {"name": "l3"}}},
            "pruning.criterion.name: unknown criterion 'l3'",
        ),
        ({"pruning": {"backend": "magic"}}, "pruning.backend: unknown surgery 'magic'"),
        (
            {"start": {"kind": "epi", "similarity": "cosine"}},
            "start.epi.similarity: unknown similarity",
        ),
        (
            {"pruning": {"budget": {"fraction": 0}}},
            "pruning.budget.fraction: must be in (0, 1], got 0",
        ),
        ({"pruning": {"budget": {"fraction": 1.5}}}, "pruning.budget.fraction: must be in (0, 1]"),
        (
            {"start": {"kind": "fixed", "epoch": 40}},
            "start.epoch (40) must be < training.epochs (30)",
        ),
        (
            {"training": {"epochs": 3}, "start": {"kind": "epi", "latest_start": 3}},
            "start.latest_start (3) must be < training.epochs (3)",
        ),
        ({"start": {"kind": "epi", "latest_start": -1}}, "start.epi.latest_start: must be >= 0 or 'auto'"),
        (
            {"training": {"epochs": 2, "schedule": {"warmup_epochs": 3}}},
            "training: warmup_epochs (3.0) must be < epochs (2)",
        ),
        (
            {"start": {"kind": "sometime"}},
            "start: Input tag 'sometime' found using 'kind' does not match",
        ),
        (
            {"data": {"name": "cifar10", "params": {"root": "/no/such/dir"}}},
            "data.params: data root '/no/such/dir' does not exist",
        ),
    ],
)
def test_bad_configs_name_the_field(data, expected):
    assert any(expected in e for e in errors_for(data)), errors_for(data)


def test_every_error_is_reported_at_once():
    errors = errors_for({"training": {"epochs": 0}, "model": {"name": "nope"}, "extra": 1})
    assert len(errors) == 3


def test_cli_validate_reports_errors_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"pruning": {"budget": {"fraction": 2}}, "typo": 1}))
    result = CliRunner().invoke(main, ["validate", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}: pruning.budget.fraction: must be in (0, 1], got 2" in result.output
    assert f"{bad}: typo: Extra inputs are not permitted" in result.output
    assert "Traceback" not in result.output


def test_cli_validate_ok_prints_the_resolved_config(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"start": {"kind": "fixed", "epoch": 3}}))
    result = CliRunner().invoke(main, ["validate", str(good)])
    assert result.exit_code == 0, result.output
    assert f"{good}: OK" in result.output and "kind: fixed" in result.output


@pytest.mark.parametrize("content, message", [(None, "file does not exist"), ("a: [", "not valid YAML")])
def test_cli_unreadable_files(tmp_path, content, message):
    path = tmp_path / "cfg.yaml"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and message in result.output


def test_cli_run_missing_data_is_a_clear_error(tmp_path):
    data_dir = tmp_path / "cifar"
    data_dir.mkdir()  # exists, but holds no CIFAR-10 batches
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "output_dir": str(tmp_path / "runs"),
                "data": {"name": "cifar10", "params": {"root": str(data_dir)}},
                "model": {"name": "cifar_resnet20", "params": {}},
            }
        )
    )
    result = CliRunner().invoke(main, ["run", str(cfg), "--local"])
    assert result.exit_code == 2
    assert "cifar10: no valid CIFAR-10 batches under" in result.output
    assert "Traceback" not in result.output


def test_oracle_grid_default_and_config_error_pickles():
    import pickle

    from pat_ray.config import oracle_grid

    assert oracle_grid(Config()) == [0, 3, 6, 9, 12, 15, 18]
    err = ConfigError("f.yaml", ["a: bad"])
    assert pickle.loads(pickle.dumps(err)).errors == ["a: bad"]


def test_cifar10_resnet56_pipeline_validates_where_the_data_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = ROOT / "pipelines" / "cifar10_resnet56.yaml"
    with pytest.raises(ConfigError, match="data root 'data/cifar10' does not exist"):
        load_config(path)
    (tmp_path / "data" / "cifar10").mkdir(parents=True)
    config = load_config(path)
    assert (config.model.name, config.data.name, config.training.epochs) == ("cifar_resnet56", "cifar10", 160)
    assert oracle_grid(config)[-1] < config.training.epochs


@pytest.mark.parametrize(
    "path",
    sorted(p for p in (ROOT / "pipelines").glob("*.yaml") if not p.name.startswith(("imagenet", "cifar10"))),
    ids=lambda p: p.name,
)
def test_every_shipped_pipeline_validates(path):
    """Those on downloaded data need its folder (tests/test_cluster.py validates ImageNet's with one)."""
    if "fashion_mnist" in path.read_text() and not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    from pat_ray.plugins.user_code import trusting

    with trusting("examples"):  # digits_own_model.yaml's model is examples/small_cnn.py (run with --trust examples)
        assert load_config(path).name


def test_validating_a_config_builds_no_plugin_object_but_runs_its_check(plugins):
    """Validation checks names and values; it makes nothing. A criterion's own ``check`` sees
    the params (a bad value is reported by validate), its constructor is never called."""
    import pat_ray
    from pat_ray.core.criterion import Criterion

    built, checked = [], []

    class Counting(Criterion):
        def __init__(self, scale: float = 1.0) -> None:
            built.append(scale)

        @staticmethod
        def check(scale: float = 1.0) -> None:
            checked.append(scale)
            if scale <= 0:
                raise ValueError(f"counting criterion: scale must be positive, got {scale}")

        def scores(self, model, graph):
            return {}

    class Plugin:
        @pat_ray.hookimpl
        def pat_ray_register_criteria(self, register):
            register("counting", Counting)

    plugins(Plugin(), name="counting-plugin")
    config_from_dict({"pruning": {"criterion": {"name": "counting", "params": {"scale": 2.0}}}})
    with pytest.raises(ConfigError, match="pruning.criterion.params: counting criterion: scale must be positive"):
        config_from_dict({"pruning": {"criterion": {"name": "counting", "params": {"scale": -1.0}}}})
    assert built == [] and checked == [2.0, -1.0]
