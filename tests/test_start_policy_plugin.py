"""A start policy from a third-party distribution (``pat_ray_register_start_policies``),
installed as pip would leave it: the config selects it by ``kind`` and validates its fields,
``pat-ray config`` documents them, a run starts pruning when it says, and the oracle plans,
summarizes and reports its trial beside the built-ins."""

from __future__ import annotations

import sys
import textwrap

import pytest
from click.testing import CliRunner

import pat_ray
from _helpers import configured
from pat_ray.cli import main
from pat_ray.config import config_from_dict
from pat_ray.config.keys import config_schema
from pat_ray.errors import ConfigError
from pat_ray.sweep.plan import OracleSummary, TrialOutcome, summarize, trial_configs
from pat_ray.sweep.report import write_report

PLUGIN = """
from typing import Literal

from pydantic import Field

import pat_ray
from pat_ray.sdk import StartPolicy


class Halfway(StartPolicy):
    kind: Literal["halfway"] = "halfway"
    share: float = Field(0.5, gt=0, lt=1, description="the share of training after which pruning starts")

    def decide(self, position, train_epochs, watched):
        return position >= self.share * train_epochs


@pat_ray.hookimpl
def pat_ray_register_start_policies(register):
    register("halfway", Halfway)
"""


@pytest.fixture
def installed_policy(tmp_path, monkeypatch, fresh_registry):
    (tmp_path / "my_policy_plugin.py").write_text(textwrap.dedent(PLUGIN))
    dist = tmp_path / "pat_ray_halfway-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pat-ray-halfway\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text("[pat_ray]\nhalfway = my_policy_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fresh_registry.unregister_plugins()
    yield
    sys.modules.pop("my_policy_plugin", None)


def test_a_plugins_policy_is_chosen_by_kind_with_its_fields_checked(installed_policy, tmp_path):
    config = configured(output_dir=tmp_path, start={"kind": "halfway", "share": 0.25})
    assert type(config.start).__name__ == "Halfway" and config.start.share == 0.25
    assert config.model_dump(mode="json")["start"] == {
        "kind": "halfway",
        "snapshot_every": 1.0,
        "latest_start": "auto",  # a plugin's policy has the latest start every watching policy has
        "share": 0.25,
    }
    with pytest.raises(ConfigError, match=r"start\.halfway\.share: Input should be less than 1"):
        config_from_dict({"start": {"kind": "halfway", "share": 2}})
    with pytest.raises(ConfigError, match="found using 'kind' does not match any of: epi, .*halfway"):
        config_from_dict({"start": {"kind": "halfwey"}})
    shown = CliRunner().invoke(main, ["config", "start.share"])
    assert "the share of training after which pruning starts" in shown.output
    listed = CliRunner().invoke(main, ["plugins"]).output
    assert any(
        line.split()[:2] == ["start_policy", "halfway"] and "pat-ray-halfway" in line for line in listed.splitlines()
    )
    assert "halfway" in config_schema()["properties"]["start"]["discriminator"]["mapping"]


def test_a_run_starts_pruning_when_the_plugins_policy_says(installed_policy, tmp_path):
    config = configured(
        output_dir=tmp_path,
        start={"kind": "halfway", "share": 0.25},
        training={"epochs": 8},
        tracking={"mlflow": False},
    )
    result = pat_ray.run(config, local=True, quiet=True)
    assert result.trigger_epoch == 2 and result.started_by == "policy" and abs(result.flops_kept - 0.5) < 0.015
    late = configured(config, start={"kind": "halfway", "share": 0.9})  # past its latest start, epoch 4
    result = pat_ray.run(late, local=True, quiet=True)
    assert result.trigger_epoch == 4 and result.started_by == "latest_start" and result.at_budget
    assert result.start_text() == "halfway did not fire by epoch 4: pruning started there (start.latest_start)"


def test_the_oracle_runs_reports_and_compares_the_plugins_policy(installed_policy, tmp_path):
    config = configured(
        output_dir=tmp_path,
        training={"epochs": 6},
        oracle={"start_epochs": [0, 3], "policies": ["halfway", "never"], "seeds": [0, 1]},
    )
    trials = trial_configs(config)
    assert sorted(trials) == sorted(
        f"{group}-s{seed}" for group in ("fixed-0", "fixed-3", "halfway", "never") for seed in (0, 1)
    )
    assert type(trials["halfway-s1"].start).__name__ == "Halfway" and trials["halfway-s1"].training.seed == 1
    outcomes = [
        TrialOutcome(
            label=label,
            policy=cfg.start.kind,
            start_epoch=start,
            accuracy=acc,
            flops_kept=0.5,
            train_flops=1.0,
            train_flops_ratio=0.6,
            wall_seconds=1.0,
            epochs=6,
            seed=cfg.training.seed,
        )
        for label, cfg in trials.items()
        for start, acc in [
            {"fixed-0": (0, 0.80), "fixed-3": (3, 0.84), "halfway": (3, 0.85), "never": (None, 0.86)}[
                label.rsplit("-s", 1)[0]
            ]
        ]
    ]
    summary = summarize("plug", config, outcomes, [], None)
    assert summary.group("halfway").mean == pytest.approx(0.85) and summary.group("halfway").mean_start == 3
    write_report(tmp_path, summary)
    report = (tmp_path / "report.md").read_text()
    assert "| halfway | start policy `halfway` (plugin) | 3, 3 | 0.8500" in report
    assert OracleSummary.from_json(summary.to_json()) == summary
    with pytest.raises(ConfigError, match=r"oracle\.policies: .*unknown start policies \['fixed'\]"):
        configured(config, oracle={"policies": ["fixed"]})
