"""A one-worker Ray run: the engine in one Ray task, each epoch streamed back to the driver.

One worker has no peers: no process group, no EPI agreement, nothing for Train's controller
and worker group to coordinate, yet they cost a run about ten seconds of processes starting and
stopping on a two-core machine (BENCHMARKS.md, "Scaling"), as long as the default pipeline's
training. So a one-worker run is one task holding the worker's resources (its CPUs, its GPU),
which yields its epochs (metrics and the checkpoint's bytes) as a Ray streaming generator; the
driver records them with the ``RunRecorder`` that Train's callback uses for several workers, and
restarts the task from the run folder's last checkpoint when it fails, up to
``scaling.max_failures`` times, as Train restarts a worker group. What the task finds wrong with
what the user gave, or a node without the data, ends the run at once.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from pat_ray.config import Config
from pat_ray.distributed.failures import explained, is_fatal, resources_never_came
from pat_ray.distributed.recorder import RunRecorder, final_result
from pat_ray.distributed.worker import WorkerTask, payload_file, task_config, train_task
from pat_ray.errors import first_line
from pat_ray.run_folder.files import LAST
from pat_ray.storage import Location
from pat_ray.tracking.live import LiveTarget
from pat_ray.training.records import RunResult


@dataclass(frozen=True)
class Started:
    """The task's first item: it holds its resources and runs (the driver stops waiting for them)."""


@dataclass(frozen=True)
class Reported:
    """One epoch: rank 0's metrics and, when the engine saved one, the checkpoint's bytes."""

    metrics: dict[str, Any]
    checkpoint: bytes | None


def run_in_one_task(
    config: Config, task: WorkerTask, folder: Location, tracking: LiveTarget | None, options: dict[str, Any]
) -> RunResult:
    """Train ``config`` in one Ray task started with ``options`` (its resources and runtime
    environment), recording every epoch into ``folder``; a failed task is started again from the
    folder's ``last.pt`` until ``scaling.max_failures`` failures have been spent."""
    recorder = RunRecorder(folder, config, tracking)
    started, failures = time.perf_counter(), 0
    while True:
        stream = _streamed_run.options(**options).remote(task)
        try:
            _follow(stream, recorder, config, options)
            break
        except Exception as err:
            from_task, fatal, final = _is_rays(err), is_fatal(err), explained(err, config)
            if not from_task:  # the driver's own error (or no resources): the task may still run
                _stop(stream)
            allowed = config.scaling.max_failures  # -1: no limit
            if 0 <= allowed <= failures or fatal or not from_task:
                raise final from (None if final is err or fatal else err)
            failures += 1
            task = _from_last_checkpoint(task, folder)
            limit = allowed if allowed >= 0 else "-1, no limit"
            print(
                f"note: the worker failed ({first_line(final)}); starting it again from the last "
                f"checkpoint (failure {failures} of scaling.max_failures={limit})",
                flush=True,
            )
        except BaseException:  # Ctrl-C, SIGTERM: the worker stops with the driver
            _stop(stream)
            raise
    return final_result(config, folder, time.perf_counter() - started)


def _from_last_checkpoint(task: WorkerTask, folder: Location) -> WorkerTask:
    """The task again, resuming from the newest checkpoint the run folder holds (none yet: as it was)."""
    if not (folder / LAST).is_file():
        return task
    return dataclasses.replace(task, resume=ray.put((folder / LAST).read_bytes()))


def _follow(stream: Any, recorder: RunRecorder, config: Config, options: dict[str, Any]) -> None:
    """Record each epoch the task yields, once it has started."""
    _wait_until_started(stream, config, options)
    for ref in stream:
        item = ray.get(ref)
        if isinstance(item, Reported):
            recorder.epoch([item.metrics], item.checkpoint)


WAIT_NOTE_S = 5.0  # a task not started by then is waiting for resources: say so once


def _wait_until_started(stream: Any, config: Config, options: dict[str, Any]) -> None:
    """A task that has not started within ``scaling.resource_wait_s`` is waiting for resources
    the cluster does not have; one that waits longer than ``WAIT_NOTE_S`` says what for."""
    wait_s = config.scaling.resource_wait_s
    ready, _ = ray.wait([stream], timeout=min(WAIT_NOTE_S, wait_s))
    if not ready and wait_s > WAIT_NOTE_S:
        wanted = f"{options['num_cpus']} CPU" + (", 1 GPU" if options.get("num_gpus") else "")
        print(f"note: the worker has not started yet (it needs {wanted}); waiting at most {wait_s:g} s "
              "(scaling.resource_wait_s)", flush=True)  # fmt: skip
        ready, _ = ray.wait([stream], timeout=wait_s - WAIT_NOTE_S)
    if not ready:
        raise resources_never_came(config)


def _stop(stream: Any) -> None:
    try:
        ray.cancel(stream, force=True)
    except Exception:  # already finished, or Ray is gone with the driver
        pass


def _is_rays(error: BaseException) -> bool:
    """Errors from the task (and its node or process dying) arrive as Ray's; others are the driver's own."""
    return isinstance(error, ray.exceptions.RayError)


_DONE = object()


@ray.remote(num_returns="streaming", max_retries=0, max_calls=1)
def _streamed_run(task: WorkerTask) -> Iterator[Started | Reported]:
    """The worker's side, in a process of its own (``max_calls=1``: Ray reuses a task's process
    otherwise, and a run leaves its plugins, trusted modules and threads set in it). The engine
    reports from deep in its loop and a generator can only yield from its own frame: the engine
    runs in a thread of this task and hands each epoch over a queue (Train runs a worker's loop
    in a thread of its actor, too)."""
    yield Started()
    handed: queue.SimpleQueue = queue.SimpleQueue()

    def send(metrics: dict[str, Any], checkpoint: Path | None) -> None:
        handed.put(Reported(metrics, checkpoint.read_bytes() if checkpoint is not None else None))

    def engine() -> None:
        try:
            _train_alone(task, send)
            handed.put(_DONE)
        except BaseException as err:  # raised again by the generator, which Ray sends to the driver
            handed.put(err)

    threading.Thread(target=engine, name="pat_ray-engine", daemon=True).start()
    while (item := handed.get()) is not _DONE:
        if isinstance(item, BaseException):
            raise item
        yield item


def _train_alone(task: WorkerTask, send) -> None:
    import torch

    from pat_ray.training.collective import LocalCollective

    config = task_config(task)
    if config.scaling.use_gpu:  # Ray shows the task only its own GPU
        torch.cuda.set_device(0)
    train_task(task, config, LocalCollective(), send, payload_file(task.resume))
