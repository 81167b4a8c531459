"""One writer per run folder, and resumes that continue the same run or say why not."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from _helpers import start_cli, stop_after_epoch
from pat_ray.cli import main


def write_config(tmp_path: Path, name: str = "digits", **sections) -> Path:
    data = {
        "name": name,
        "output_dir": str(tmp_path / "runs"),
        "training": {"epochs": 4},
        "start": {"kind": "fixed", "epoch": 1},
        "tracking": {"mlflow": False},
    }
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(data.get(key), dict) else value
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _start(config: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return start_cli("run", str(config), *extra, env=env)


def _wait_for_epoch(folder: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not (folder / "history.json").is_file():
        assert process.poll() is None and time.time() < deadline, "the first run never reported an epoch"
        time.sleep(0.2)


@pytest.mark.parametrize("where", ["local", "ray"])
def test_a_resume_of_a_run_in_progress_is_refused_at_once_naming_the_holder(where, tmp_path, request):
    env = {}
    extra = ["--local"] if where == "local" else []
    if where == "ray":
        request.getfixturevalue("local_ray")
        import ray

        env = {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    config = write_config(tmp_path, training={"epochs": 12})
    first = _start(config, *extra, env=env)
    try:
        _wait_for_epoch(tmp_path / "runs" / "digits" / "latest", first)
        second = _start(config, *extra, "--resume", env=env)
        out = second.communicate(timeout=120)[0]
        assert second.returncode == 2, out
        assert f"is in use by another run (pid {first.pid} on " in out and "nothing was changed" in out, out
        assert "Traceback" not in out
        assert first.poll() is None  # the holder runs on
    finally:
        first.send_signal(signal.SIGTERM)  # the holder need not run its 12 epochs for this test
        out = first.communicate(timeout=120)[0]
    assert first.returncode in (0, 128 + signal.SIGTERM), out
    history = json.loads((tmp_path / "runs" / "digits" / "latest" / "history.json").read_text())
    assert [r["epoch"] for r in history] == list(range(1, len(history) + 1))  # the holder's run, untouched


def _cut_after_two(tmp_path: Path) -> Path:
    """A run stopped (SIGTERM) after its second epoch; returns its config."""
    config = write_config(tmp_path)
    stop_after_epoch(_start(config, "--local"), 2, signal.SIGTERM)
    return config


def test_a_resume_that_would_change_the_run_is_refused_naming_each_field(tmp_path):
    _cut_after_two(tmp_path)
    folder = tmp_path / "runs" / "digits" / "latest"
    before = {name: (folder / name).read_bytes() for name in ("last.pt", "history.json")}
    changed = write_config(tmp_path, pruning={"budget": {"fraction": 0.3}}, model={"name": "cifar_resnet32"})
    result = CliRunner().invoke(main, ["run", str(changed), "--local", "--resume"])
    assert result.exit_code == 2, result.output
    assert "--resume would change the run in" in result.output
    assert "pruning.budget.fraction: 0.5 -> 0.3" in result.output
    assert "model.name: 'cifar_resnet20' -> 'cifar_resnet32'" in result.output
    assert {name: (folder / name).read_bytes() for name in before} == before  # nothing was changed


def test_a_resume_may_change_what_does_not_alter_the_run_and_says_so(tmp_path):
    _cut_after_two(tmp_path)
    safe = write_config(tmp_path, data={"eval_batch_size": 100})
    # a KEY=VALUE right after --resume is an override, not the run to continue
    result = CliRunner().invoke(main, ["run", str(safe), "--local", "--resume", "scaling.max_failures=3"])
    assert result.exit_code == 0, result.output + result.stderr
    assert "note: resuming with changes that do not alter the run" in result.stderr
    assert "scaling.max_failures: 1 -> 3" in result.stderr and "data.eval_batch_size: 512 -> 100" in result.stderr
    history = json.loads((tmp_path / "runs" / "digits" / "latest" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]


def test_a_resume_of_a_run_that_does_not_exist_leaves_no_folder_behind(tmp_path):
    config = write_config(tmp_path)
    typo = tmp_path / "runs" / "digits" / "20261203-1200"
    result = CliRunner().invoke(main, ["run", str(config), "--local", "--resume", str(typo)])
    assert result.exit_code == 2 and "there is no run to resume" in result.output, result.output
    assert not typo.exists()


def test_resuming_a_finished_run_says_so_and_changes_nothing(tmp_path):
    config = write_config(tmp_path, training={"epochs": 3})
    assert CliRunner().invoke(main, ["run", str(config), "--local"]).exit_code == 0
    folder = tmp_path / "runs" / "digits" / "latest"
    before = (folder / "last.pt").read_bytes()
    result = CliRunner().invoke(main, ["run", str(config), "--local", "--resume"])
    assert result.exit_code == 0 and "already finished (epoch 3 of 3); nothing was changed" in result.output
    assert (folder / "last.pt").read_bytes() == before


def test_runs_lists_each_run_with_its_status_newest_first(plugins, tmp_path):
    import pat_ray
    from _helpers import configured
    from pat_ray.config import FixedStart

    def config(name: str, epochs: int = 3):
        return configured(
            name=name,
            output_dir=tmp_path / "runs",
            training={"epochs": epochs},
            start=FixedStart(epoch=1),
            tracking={"mlflow": False},
        )

    class Stop:
        def __init__(self, error):
            self.error = error

        @pat_ray.hookimpl
        def pat_ray_on_epoch_end(self, epoch, metrics):
            if epoch == 1:
                raise self.error

    done = pat_ray.run(config("done"), local=True, quiet=True)
    plugins(Stop(KeyboardInterrupt()), name="stop")
    with pytest.raises(KeyboardInterrupt):
        pat_ray.run(config("cut"), local=True, quiet=True)
    from pat_ray.plugins import registry

    registry.unregister_plugins()
    plugins(Stop(RuntimeError("boom")), name="boom")
    with pytest.raises(Exception, match="boom"):
        pat_ray.run(config("broken"), local=True, quiet=True)
    registry.unregister_plugins()
    live = _start(write_config(tmp_path, name="live", training={"epochs": 30}), "--local")
    try:
        _wait_for_epoch(tmp_path / "runs" / "live" / "latest", live)
        listed = CliRunner().invoke(main, ["runs", str(tmp_path / "runs"), "--json"])
        table = CliRunner().invoke(main, ["runs", str(tmp_path / "runs")])
    finally:
        live.kill()
        live.communicate()
    assert listed.exit_code == 0, listed.output
    entries = [json.loads(line) for line in listed.output.splitlines()]
    assert [e["name"].split("/")[0] for e in entries] == ["live", "broken", "cut", "done"]
    assert all(re.fullmatch(r"\w+/\d{8}-\d{6}", e["name"]) for e in entries), entries
    assert [e["status"] for e in entries] == ["running", "failed", "interrupted", "finished"]
    finished = entries[-1]
    assert finished["final_accuracy"] == done.final_accuracy and finished["trigger_epoch"] == 1
    assert finished["train_flops_ratio"] == pytest.approx(done.train_flops_ratio)
    assert table.output.splitlines()[0].split()[:3] == ["run", "status", "trigger"]
    assert re.search(r"^done/\S+\s+finished\s+epoch 1\s", table.output, re.M), table.output
    missing = CliRunner().invoke(main, ["runs", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_an_interrupt_before_the_first_checkpoint_says_there_is_nothing_to_resume(plugins, tmp_path):
    import torch
    from torch.utils.data import TensorDataset

    import pat_ray
    from pat_ray.sdk import DataBundle

    class Interrupted(TensorDataset):
        def __getitem__(self, index):
            if index == 5:
                raise KeyboardInterrupt
            return super().__getitem__(index)

    class Data:
        @pat_ray.hookimpl
        def pat_ray_register_datasets(self, register):
            def stops(seed: int = 0):
                images, labels = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
                return DataBundle(Interrupted(images, labels), TensorDataset(images, labels), 10, (1, 8, 8))

            register("stops", stops)

    plugins(Data(), name="stops-data")
    config = write_config(
        tmp_path, data={"name": "stops", "batch_size": 64}, training={"epochs": 20}, pruning={"interval": 1}
    )
    from pat_ray import cli

    cli.connects_to_ray()  # as an earlier command on Ray in this process leaves it: this --local one must not
    result = CliRunner().invoke(main, ["run", str(config), "--local"])  # skip this process's teardown (os._exit)
    assert result.exit_code == 130, result.output
    assert "no epoch had finished, so there is nothing to resume" in result.output and "--resume" not in result.output
    listed = CliRunner().invoke(main, ["runs", str(tmp_path / "runs"), "--json"])
    (entry,) = [json.loads(line) for line in listed.output.splitlines()]
    assert entry["status"] == "interrupted" and entry["epochs"] == 0
