"""A plugin that raises during a run is named (with its distribution) and the run stops cleanly."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

import pat_ray
from pat_ray.cli import main
from pat_ray.core.criterion import Criterion, filter_norms
from pat_ray.plugins import registry
from pat_ray.training.checkpoint import read_checkpoint


class FlakyCriterion(Criterion):
    """Magnitude scores for the first ``good`` snapshots, then an exception."""

    def __init__(self, good: int = 2) -> None:
        self.calls, self.good = 0, good

    def scores(self, model, graph):
        self.calls += 1
        if self.calls > self.good:
            raise ZeroDivisionError("flaky criterion gave up")
        return {g.name: filter_norms(model, g, 2.0) for g in graph.prunable}


class FlakyPlugin:
    @pat_ray.hookimpl
    def pat_ray_register_criteria(self, register):
        register("flaky", FlakyCriterion)


@pytest.fixture
def flaky_registered(plugins):
    plugins(FlakyPlugin(), name="flaky-plugin")


def test_a_criterion_that_raises_stops_the_run_naming_the_plugin_and_keeps_the_checkpoint(flaky_registered, tmp_path):
    config = {
        "output_dir": str(tmp_path),
        "training": {"epochs": 4},
        "start": {"kind": "never"},
        "pruning": {"criterion": {"name": "flaky"}},
        "tracking": {"mlflow": False},  # not what this checks
    }
    path = tmp_path / "flaky.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, ["run", str(path), "--local"])
    assert result.exit_code == 1, result.output
    assert "criterion 'flaky' from plugin 'flaky-plugin' (registered in-process)" in result.output
    assert "raised in scores(): ZeroDivisionError: flaky criterion gave up" in result.output
    assert "checkpoint is kept" in result.output and "Traceback" not in result.output
    ckpt = read_checkpoint(tmp_path / "digits" / "latest" / "last.pt")  # the snapshot after epoch 3 failed
    assert ckpt.extra["epoch"] == 2 and [h["epoch"] for h in ckpt.extra["history"]] == [1, 2]


def test_guarded_plugins_pass_attributes_through(flaky_registered):
    criterion = registry.get_registry().create("criterion", "flaky", good=0)
    assert criterion.needs_gradients is False and criterion.good == 0
    with pytest.raises(pat_ray.PluginFailure, match=r"^criterion 'flaky' from plugin 'flaky-plugin'"):
        criterion.scores(None, None)
