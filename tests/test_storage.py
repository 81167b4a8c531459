"""Run folders and sweeps in a store: local paths and URIs through one ``Location``, and a real
S3 API server on loopback (moto's, started by the suite) for ``s3://`` runs, resumes and the
no-overwrite guard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from _helpers import configured, start_cli, stop_after_epoch
from pat_ray.cli import main
from pat_ray.config import FixedStart
from pat_ray.errors import ConfigError
from pat_ray.run_folder.versions import find_version, versions
from pat_ray.storage import Location, has_scheme

ROOT = Path(__file__).resolve().parents[1]


def test_local_locations_are_absolute_and_replace_files_keeping_a_backup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = Location.of("runs")
    assert folder.uri == str(tmp_path / "runs") and folder.is_local
    (folder / "a.txt").write_text("one")
    (folder / "a.txt").write_bytes(b"two", backup=folder / "b.txt")
    assert (tmp_path / "runs" / "a.txt").read_text() == "two" and (tmp_path / "runs" / "b.txt").read_text() == "one"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["a.txt", "b.txt"]  # no temp file left


def test_uris_keep_their_scheme_and_query_when_joined():
    uri = Location.of("s3://bucket/runs/?endpoint_override=http://127.0.0.1:9&scheme=http")
    joined = uri / "digits" / "last.pt"
    assert joined.uri == "s3://bucket/runs/digits/last.pt?endpoint_override=http://127.0.0.1:9&scheme=http"
    assert joined.name == "last.pt" and not joined.is_local
    assert has_scheme("gs://b/x") and has_scheme("file:///tmp/x") and not has_scheme("runs/x")
    assert not has_scheme("C:\\runs")


def test_a_file_uri_is_written_through_pyarrow_with_a_temp_file_moved_into_place(tmp_path):
    folder = Location.of(f"file://{tmp_path}/store")
    assert not folder.is_local and not folder.exists()
    (folder / "a.pt").write_bytes(b"one")
    (folder / "a.pt").write_bytes(b"two", backup=folder / "b.pt")
    (folder / "c.pt").copy_from(folder / "a.pt")
    assert [(folder / n).read_bytes() for n in ("a.pt", "b.pt", "c.pt")] == [b"two", b"one", b"two"]
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["a.pt", "b.pt", "c.pt"]  # no temp left
    assert (folder / "a.pt").download(tmp_path / "local.pt").read_bytes() == b"two"
    with pytest.raises(FileNotFoundError):
        (folder / "missing.pt").read_bytes()


@pytest.mark.parametrize("uri", ["s4://bucket/runs", "bogus://x"])
def test_an_unknown_scheme_is_refused_naming_the_field_and_nothing_is_written(uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"output_dir: unknown storage scheme"):
        configured(output_dir=uri)
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {uri}\n")
    result = CliRunner().invoke(main, ["run", str(config), "--local"])
    assert result.exit_code == 2 and "output_dir: unknown storage scheme" in result.output
    assert list(tmp_path.iterdir()) == [config]  # no folder named after the scheme


def _cli(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pat_ray.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


def test_a_local_run_to_s3_resumes_after_a_kill_and_never_overwrites(s3_server, tmp_path):
    """Everything a run folder holds lands in the bucket; a run killed mid-way (SIGKILL: no
    clean-up at all) resumes from the bucket with each epoch once, found as the newest version
    by listing (a bucket has no ``latest`` link); the checkpoint loads from its URI; no local
    folder is named after the scheme."""
    import pat_ray

    output = s3_server("local-runs")
    config = configured(output_dir=output, training={"epochs": 5}, start=FixedStart(epoch=2))
    path = tmp_path / "s3.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")))  # JSON is YAML
    stop_after_epoch(start_cli("run", str(path), "--local", cwd=tmp_path), 3, signal.SIGKILL)
    folder = find_version(Location.of(output) / "digits")
    assert json.loads((folder / "history.json").read_text())[-1]["epoch"] == 3
    resumed = _cli("run", str(path), "--local", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"checkpoint:       {folder / 'last.pt'}" in resumed.stdout
    history = json.loads((folder / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5]
    assert "s3://pat-ray-tests/local-runs" in (folder / "config.yaml").read_text()
    assert (folder / "previous.pt").is_file() and (folder / "mlflow_run.json").is_file()
    model, ckpt = pat_ray.load_checkpoint(str(folder / "last.pt"))
    assert ckpt.extra["epoch"] == 5 and sum(p.numel() for p in model.parameters()) > 0
    assert not any(p.name.startswith("s3:") for p in tmp_path.rglob("*"))
    assert versions(Location.of(output) / "digits") == [folder.name]
    listed = _cli("runs", output, "--json", cwd=tmp_path)  # the runs in a bucket, by their URI
    (entry,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert entry["name"] == f"digits/{folder.name}" and entry["status"] == "finished" and entry["epochs"] == 5
    exported = _cli("export", str(folder), "--format", "state_dict", cwd=tmp_path)
    assert exported.returncode == 0 and (tmp_path / "last.state_dict.pt.json").is_file(), exported.stderr


def test_a_one_worker_ray_run_writes_its_folder_to_s3_from_the_checkpoints_it_streams(s3_server, local_ray):
    import pat_ray

    output = s3_server("ray-one")
    config = configured(
        output_dir=output, training={"epochs": 3}, start=FixedStart(epoch=1), tracking={"mlflow": False}
    )
    result = pat_ray.run(config)
    folder = find_version(Location.of(output) / "digits")
    assert result.checkpoint == str(folder / "last.pt")
    assert [r["epoch"] for r in json.loads((folder / "history.json").read_text())] == [1, 2, 3]
    _, ckpt = pat_ray.load_checkpoint(str(folder / "last.pt"))
    _, before = pat_ray.load_checkpoint(str(folder / "previous.pt"))
    assert (ckpt.extra["epoch"], before.extra["epoch"]) == (3, 2)
    assert not (Location.of(output) / "ray").exists()  # no Ray Train storage: the task streams its checkpoints


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_store_that_cannot_be_reached_is_one_line_naming_the_field_and_the_uri(command, tmp_path):
    uri = "s3://pat-ray-nowhere/runs?endpoint_override=http://127.0.0.1:9&scheme=http&region=us-east-1"
    result = CliRunner().invoke(main, [command, f"output_dir={uri}", *(["--local"] if command == "run" else [])])
    assert result.exit_code == 2, result.output
    (line,) = [line for line in result.output.splitlines() if "output_dir" in line]
    assert f"output_dir: cannot reach {uri}: " in line and "Traceback" not in result.output


def test_a_ray_run_writes_its_folder_and_rays_storage_to_s3(s3_server, local_ray, tmp_path):
    import pyarrow.fs

    import pat_ray

    output = s3_server("ray-runs")
    config = configured(  # two workers: Ray Train, whose storage is in the bucket too (one worker has none)
        output_dir=output,
        training={"epochs": 3},
        start=FixedStart(epoch=1),
        pruning={"interval": 5},
        tracking={"mlflow": False},
        scaling={"num_workers": 2},
    )
    result = pat_ray.run(config)
    folder = find_version(Location.of(output) / "digits")
    assert result.checkpoint == str(folder / "last.pt")
    assert [r["epoch"] for r in json.loads((folder / "history.json").read_text())] == [1, 2, 3]
    ranks = [json.loads(line) for line in (folder / "ranks.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in ranks] == [1, 2, 3]
    fs, path = (Location.of(output) / "ray" / "digits" / folder.name).filesystem()
    checkpoints = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
    assert any(info.path.endswith("/last.pt") for info in checkpoints)  # Ray's own storage is the bucket too
    assert not Path("s3:").exists()
