"""Config keys on the command line: ``key.path=value`` overrides merged before validation, and
``pat-ray config`` describing every key from the schema."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from pat_ray.cli import main
from pat_ray.config import Config

ROOT_PIPELINE = "pipelines/digits.yaml"


def validated(*args: str) -> dict:
    result = CliRunner().invoke(main, ["validate", *args])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.output.split("\n", 1)[1])


def test_overrides_set_any_key_with_yaml_values():
    data = validated(
        ROOT_PIPELINE,
        "training.epochs=3",
        "pruning.budget.fraction=0.3",
        "start={kind: fixed, epoch: 1}",
        "oracle.seeds=[0,1]",
        "tracking.mlflow=false",
        "model.params.in_channels=1",
    )
    assert data["training"]["epochs"] == 3 and data["pruning"]["budget"]["fraction"] == 0.3
    assert data["start"] == {"kind": "fixed", "snapshot_every": 1.0, "epoch": 1} and data["oracle"]["seeds"] == [0, 1]
    assert data["tracking"]["mlflow"] is False


def test_overrides_apply_to_the_default_pipeline_without_a_file():
    assert validated("training.epochs=3", "start.kind=never")["start"] == {"kind": "never", "snapshot_every": 1.0}


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.epoch=3", "training.epoch: no such key; did you mean training.epochs?"),
        ("pruning.budjet.fraction=0.3", "did you mean pruning.budget.fraction?"),
        ("training.epochs=three", "training.epochs: Input should be a valid integer"),
        ("pruning.budget.fraction=2", "pruning.budget.fraction: must be in (0, 1], got 2"),
        ("start.kind=fixed", "start.fixed.epoch: Field required"),
        ("oracle.seeds=[0, 0]", "oracle.seeds: must be a non-empty list of distinct seeds"),
        ("nonsense", "is not key.path=value"),
    ],
)
def test_a_bad_override_is_refused_naming_the_key(override, message):
    result = CliRunner().invoke(main, ["validate", ROOT_PIPELINE, override])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_the_run_folder_records_the_merged_config_and_mlflow_the_overrides(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [
        "training.epochs=3",
        "start={kind: fixed, epoch: 1}",
        f"tracking.tracking_uri={uri}",
        f"output_dir={tmp_path}",
    ]
    result = CliRunner().invoke(main, ["run", ROOT_PIPELINE, *args, "--local"])
    assert result.exit_code == 0, result.output
    recorded = yaml.safe_load((tmp_path / "digits" / "latest" / "config.yaml").read_text())
    assert recorded["training"]["epochs"] == 3 and recorded["start"] == {
        "kind": "fixed",
        "snapshot_every": 1.0,
        "epoch": 1,
    }
    run_id = json.loads((tmp_path / "digits" / "latest" / "mlflow_run.json").read_text())["run_id"]
    tags = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id).data.tags
    assert tags["pat_ray.overrides"] == " ".join(args)


def test_config_describes_every_key_with_type_default_and_meaning():
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 0
    for key in ("training.epochs", "pruning.budget.fraction", "start.tau", "scaling.resource_wait_s", "output_dir"):
        assert f"  {key}  (" in result.output, key
    budget = CliRunner().invoke(main, ["config", "pruning.budget.fraction"]).output
    assert "(float, default 0.5)" in budget and "fraction of `measure` to keep" in budget
    kinds = CliRunner().invoke(main, ["config", "start.kind"]).output
    assert "'epi' | 'early_bird' | 'fixed' | 'never' | 'after_training'" in kinds
    wrong = CliRunner().invoke(main, ["config", "pruning.budjet"])
    assert wrong.exit_code == 2 and "did you mean pruning.budget?" in wrong.output


def test_config_schema_is_the_json_schema_editors_read():
    result = CliRunner().invoke(main, ["config", "--schema"])
    schema = json.loads(result.output)
    assert schema["properties"]["training"] == Config.model_json_schema()["properties"]["training"]
    start = schema["properties"]["start"]
    assert set(start["discriminator"]["mapping"]) == {"epi", "early_bird", "fixed", "never", "after_training"}
    assert all(ref["$ref"].removeprefix("#/$defs/") in schema["$defs"] for ref in start["oneOf"])
    assert "snapshot_every" in schema["$defs"]["FixedStart"]["properties"]


@pytest.mark.parametrize("command", ["run", "oracle", "validate", "config", "report", "plugins"])
def test_every_command_has_a_description_and_an_example(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    body = result.output.split("\n\n", 2)[1:]
    assert len(" ".join(body).split()) > 20  # a paragraph, not a line
    assert "pat-ray " + command in result.output  # an example of its own


def test_python_changes_a_config_exactly_as_the_command_line_does():
    import pat_ray

    pairs = ["training.epochs=8", "start.kind=fixed", "start.epoch=2", "pruning.budget.fraction=0.3"]
    from_file = pat_ray.load_config(ROOT_PIPELINE, overrides=pairs)
    from_cli = validated(ROOT_PIPELINE, *pairs)
    assert from_file.model_dump(mode="json") == from_cli and from_file.overrides == tuple(pairs)
    step_by_step = pat_ray.load_config(ROOT_PIPELINE).override(*pairs[:1]).override(*pairs[1:])
    assert step_by_step.model_dump(mode="json") == from_cli and step_by_step.overrides == tuple(pairs)
    assert pat_ray.Config().override(*pairs).model_dump() == from_file.model_dump()  # the file is the default
    with pytest.raises(pat_ray.ConfigError, match="training.epoch: no such key; did you mean training.epochs"):
        from_file.override("training.epoch=3")
    assert from_file.training.epochs == 8  # frozen: override made a new config and left this one alone


def test_switching_the_start_policy_takes_its_defaults_and_keeps_the_cadence():
    quarter = Config().override("start.snapshot_every=0.25", "start.tau=0.9")
    switched = quarter.override("start.kind=early_bird")
    assert switched.start.model_dump() == {
        "kind": "early_bird",
        "snapshot_every": 0.25,
        "latest_start": "auto",
        "window": 5,
        "epsilon": 0.1,
    }
    assert quarter.override("start.kind=epi").start == quarter.start  # the same kind: nothing reset
    back = switched.override("start.kind=epi")
    assert back.start.tau == Config().start.tau and back.start.snapshot_every == 0.25


def test_model_copy_validates_its_update_instead_of_keeping_a_plain_dict():
    from pydantic import ValidationError

    from pat_ray.config import TrainingConfig

    copied = Config().model_copy(update={"training": {"epochs": 7}})
    assert isinstance(copied.training, TrainingConfig) and copied.training.epochs == 7
    with pytest.raises(ValidationError, match="epochs"):
        Config().model_copy(update={"training": {"epochs": 0}})


def test_run_has_no_overrides_argument_that_could_be_silently_ignored():
    import inspect

    import pat_ray

    assert "overrides" not in inspect.signature(pat_ray.run).parameters


def test_one_source_of_defaults_for_config_the_describer_the_schema_and_the_readme():
    from pathlib import Path

    from pat_ray.config.keys import config_schema, describe

    default = Config().model_dump(mode="json")
    shown = {info.key: info.default for info in describe("start") if not info.section}
    for key in ("window", "patience", "tau", "latest_start", "snapshot_every"):
        assert shown[f"start.{key}"] == default["start"][key], key
    described = CliRunner().invoke(main, ["config", "start.tau"]).output
    assert f"default {default['start']['tau']}" in described
    epi_schema = config_schema()["$defs"]["EPIStart"]["properties"]
    assert {key: epi_schema[key]["default"] for key in ("window", "patience", "tau")} == {
        key: default["start"][key] for key in ("window", "patience", "tau")
    }
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    start = default["start"]
    assert (
        f"| `start.kind: epi` | window {start['window']}, patience {start['patience']}, tau {start['tau']} |" in readme
    )
