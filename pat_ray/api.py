"""The Python API mirrored by the CLI: load a config, run it."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from pat_ray.config import Config, ModelConfig, load_config
from pat_ray.core.data import DataBundle
from pat_ray.plugins.user_code import target_of, trust
from pat_ray.run_folder import RunFolder
from pat_ray.run_folder.files import LAST
from pat_ray.storage import Location
from pat_ray.tracking.live import LiveTarget, TrackingReporter, abandon_run, close_run, open_run
from pat_ray.training.engine import train
from pat_ray.training.preflight import check_runnable
from pat_ray.training.records import RunResult
from pat_ray.training.reporters import PrintReporter, Reporter, SilentReporter
from pat_ray.training.setup import Given


def run(
    config: Config | None = None,
    *,
    local: bool = False,
    quiet: bool = False,
    reporter: Reporter | None = None,
    resume: bool | str = False,
    model: Callable[..., nn.Module] | None = None,
    data: DataBundle | tuple[Dataset[Any], Dataset[Any]] | None = None,
) -> RunResult:
    """Run one PaT pipeline (``Config()`` is the default digits pipeline).

    By default on Ray with ``config.scaling.num_workers`` workers (one: a Ray task; more: Ray
    Train; a local Ray is started if none is running); ``local=True`` runs the same engine in this process. With
    ``tracking.mlflow`` (the default) the run is tracked in MLflow as it trains: params at
    the start, each epoch's metrics as it ends, the summary and artifacts at the end
    (``result.mlflow_run_id``); a resumed run continues its MLflow run.

    Each run gets its own folder, ``output_dir/name/<start time>`` (a local folder or a URI
    such as ``s3://...``; ``output_dir/name/latest`` links to the newest on a local disk), so
    a rerun never replaces an earlier one. ``resume=True`` continues the newest run of
    ``name`` from its last checkpoint (or the one before it, when the last is damaged), after
    checking that the config would not change what the run computes; ``resume="<version>"``
    (or a run folder's path or URI) continues that run. While it runs, the folder is locked: a
    second resume of it fails at once (``RunInUseError``). To change the config, make a new
    one: ``config.override("training.epochs=5")`` (recorded in MLflow as a tag).

    ``model`` and ``data`` take your own objects instead of the config's names (notebooks): a
    class or function that makes the ``nn.Module`` (given ``num_classes`` / ``in_channels`` from
    the data when it takes them, and ``model.params``), and a ``DataBundle`` or a ``(train,
    val)`` pair of datasets. A class with an import path is recorded by it in the config and
    checkpoints (its module is trusted in this process); a resume needs the same objects again.
    """
    config, given = _with_given(config or Config(), model, data)
    check_runnable(config, local=local)
    folder = RunFolder.of(config.runs_folder(), resume) if resume else RunFolder.new(config.runs_folder())
    with folder.locked("run") as lock, tempfile.TemporaryDirectory(prefix="pat_ray_run_") as scratch:
        resume_from = folder.resume_point(config, Path(scratch)) if resume else None
        if not resume:
            folder.check_new()
        lock.announce()
        folder.point_latest()
        tracked = open_run(config, folder.location, bool(resume), config.overrides) if config.tracking.mlflow else None
        try:
            if local:
                shown = reporter or (SilentReporter() if quiet else PrintReporter())
                shown = TrackingReporter(shown, tracked) if tracked else shown
                result = _run_here(config, folder, shown, resume_from, Path(scratch), given)
            else:
                result = _run_on_ray(config, folder, resume_from, tracked, given)
        except BaseException as err:
            interrupted = isinstance(err, KeyboardInterrupt)
            folder.record_end({"status": "interrupted"} if interrupted else {"status": "failed", "error": str(err)})
            err.run_folder = folder.location  # type: ignore[attr-defined]  # for a caller's "to continue, run ..." line
            if tracked:
                abandon_run(tracked, interrupted=interrupted)
            raise
        if tracked:
            result.mlflow_run_id = close_run(tracked, config, result)
        folder.record_end({"status": result.status(), **result.summary()})
    return result


def _with_given(config: Config, model: Any, data: Any) -> tuple[Config, Given]:
    """The config that records a handed-over model class by its import path, and what was given."""
    if model is not None and not callable(model):
        raise TypeError(f"model= takes a class or function that makes the model, not a {type(model).__name__}")
    path = target_of(model) if model is not None else None
    if path is not None:
        trust(path.split(":")[0])  # handing pat_ray the class is opting in for its module
        config = config.model_copy(update={"model": ModelConfig(target=path, params=config.model.params)})
    return config, Given(model, data)


def run_to_resume(config: Config, which: bool | str) -> Location:
    """The run folder ``resume`` names: the newest run of ``config.name`` (``True``), one of its
    versions (``"20261202-101500"``, ``"latest"``), or a run folder's own path or URI."""
    return RunFolder.of(config.runs_folder(), which).location


def _run_on_ray(
    config: Config, folder: RunFolder, resume: Path | None, tracked: LiveTarget | None, given: Given
) -> RunResult:
    from pat_ray.distributed.train import recorded_ray_run, run_on_ray

    restart = recorded_ray_run(folder.location) if resume is not None and resume.name == LAST else None
    if restart is not None:  # Train's same-name restart: workers read its latest checkpoint themselves
        storage, name = restart
        return run_on_ray(config, storage=storage, run_name=name, tracking=tracked, run_folder=folder, given=given)
    return run_on_ray(config, resume=resume, tracking=tracked, run_folder=folder, given=given)


def _run_here(
    config: Config, folder: RunFolder, reporter: Reporter, resume: Path | None, scratch: Path, given: Given
) -> RunResult:
    """The engine in this process; a run folder in a store is written through a local stage."""
    if folder.location.is_local:
        return train(config, reporter=reporter, resume=resume, run_dir=folder.location.local_path, given=given)
    stage = scratch / "stage"
    mirror = folder.mirror(reporter, stage, config)
    result = train(config, reporter=mirror, resume=resume, run_dir=stage, given=given)
    result.checkpoint = str(folder / LAST)
    return result


def oracle(config: Config | None = None, *, name: str | None = None, resume: bool | str = False, echo=print):
    """Run the oracle sweep of ``config`` on Ray Tune and return its ``OracleSummary``.

    Trials: the PaT recipe with pruning started at each epoch of ``oracle_grid(config)``,
    plus one per ``config.oracle.policies`` entry. The report (``report.md``, PNG plots,
    ``oracle.json``) is written into ``summary.folder``; with ``tracking.mlflow`` the sweep
    is a parent MLflow run with one child per trial. The sweep folder is
    ``output_dir/oracle/<name>/<start time>`` (``name`` defaults to ``config.name``);
    ``resume=True`` continues the newest sweep of ``name``, ``resume="<version>"`` that one.
    """
    from pat_ray.distributed.tune import run_oracle

    return run_oracle(config or Config(), name=name, resume=resume, echo=echo)


__all__ = ["run", "oracle", "load_config", "Config", "RunResult"]
