"""What each Ray worker runs (a Train worker, or the task of a one-worker run): check the
data, rebuild the plugins and config, train.

Rank 0 hands each epoch's ``last.pt`` to Ray (hard-linked into the folder Ray persists, not
copied); every rank reports its metrics, with its node id, so the driver's side can tell where
each rank ran and whether all agreed.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pat_ray.run_folder.files import LAST
from pat_ray.training.epoch_progress import EpochProgress, NoProgress, ProgressLines
from pat_ray.training.reporters import Reporter

if TYPE_CHECKING:
    from pat_ray.config import Config
    from pat_ray.plugins.registry import ShippedPlugin
    from pat_ray.training.records import RunResult
    from pat_ray.training.setup import Given

TASK = "task"  # the one key of Train's train_loop_config: the WorkerTask


@dataclass(frozen=True, kw_only=True)
class WorkerTask:
    """Everything the driver hands each Ray Train worker (Ray pickles it to every rank).

    ``config``: the validated config as JSON (re-validated on the worker, against the plugins
    below); ``plugins``: those registered in the driver's process; ``trusted``: the modules the
    config's targets may be imported from; ``given``: objects passed to ``pat_ray.run``;
    ``latency_table``: a measured table, as its dict; ``resume``: an object-store reference to
    the bytes of a ``last.pt`` to continue from; ``threads``: torch threads per worker, as
    ``--local`` would use; ``ray_log_level``: Train's own loggers' level (INFO when verbose)."""

    config: dict[str, Any]
    plugins: list[ShippedPlugin]
    trusted: list[str]
    given: Given
    latency_table: dict[str, Any] | None
    resume: Any
    threads: int
    ray_log_level: str


def worker_loop(loop_config: dict[str, WorkerTask]) -> None:
    """A Train worker: its rank's device, the process group, a report per epoch to Train."""
    import ray.train
    import torch

    from pat_ray.distributed import ray_private
    from pat_ray.training.torch_collective import DistributedCollective

    task = loop_config[TASK]
    ray_private.quiet_report_logger("INFO" if task.ray_log_level == "INFO" else "WARNING")
    config = task_config(task)
    device = torch.device("cpu")
    if config.scaling.use_gpu:
        device = torch.device("cuda", ray.train.get_context().get_local_rank())
        torch.cuda.set_device(device)
    checkpoint = ray.train.get_checkpoint()  # Train's own, after a restart; else the one the driver sent
    resume = copied_checkpoint(checkpoint) if checkpoint is not None else payload_file(task.resume)
    train_task(task, config, DistributedCollective(device), train_report, resume)


def task_config(task: WorkerTask) -> Config:
    """The validated config on a worker, once the driver's plugins and trusted modules are in
    place (the config may name both), with the driver's torch threads."""
    import torch

    from pat_ray.config import config_from_dict
    from pat_ray.errors import warnings_in_one_line
    from pat_ray.plugins.registry import install_shipped
    from pat_ray.plugins.user_code import trust

    warnings_in_one_line(lambda line: print(line, file=sys.stderr, flush=True))  # Ray forwards it to the driver
    install_shipped(task.plugins)
    trust(*task.trusted)
    torch.set_num_threads(task.threads)
    return config_from_dict(task.config)


Send = Callable[[dict[str, Any], "Path | None"], None]  # where a worker's epoch goes: Train's report, a task's stream


def train_task(task: WorkerTask, config: Config, collective, send: Send, resume: Path | None) -> RunResult:
    """The engine on one Ray worker, on the device its collective was made for: the data root
    checked first on every rank, the checkpoints in a scratch folder of its own, each epoch to ``send``."""
    import ray

    from pat_ray.core.cost.latency import LatencyTable
    from pat_ray.training.engine import train

    use_gpu = config.scaling.use_gpu
    training = config.training.model_copy(update={"device": "cuda" if use_gpu else "cpu"})
    check_data_root(config.data.params.get("root"), collective)
    reporter: Reporter = RayReporter(collective, ray.get_runtime_context().get_node_id(), send)
    run_dir = Path(tempfile.mkdtemp(prefix=f"pat_ray_rank{collective.rank}_"))
    table = LatencyTable.from_dict(task.latency_table) if task.latency_table else None
    return train(
        config.model_copy(update={"output_dir": str(run_dir), "training": training}),
        collective,
        reporter,
        resume=resume,
        latency_table=table,
        given=task.given,
    )


def payload_file(payload: Any) -> Path | None:
    """In a worker: the checkpoint the driver sent (an object-store reference to its bytes), as a local file."""
    import ray

    if payload is None:
        return None
    resume = Path(tempfile.mkdtemp(prefix="pat_ray_resume_")) / LAST
    resume.write_bytes(ray.get(payload))
    return resume


@contextmanager
def opened_checkpoint(checkpoint: Any) -> Iterator[Path]:
    """The ``last.pt`` inside a Ray checkpoint (Train's or Tune's), while the body runs: the way
    back of ``report_with_checkpoint``."""
    with checkpoint.as_directory() as saved:
        yield Path(saved) / LAST


def copied_checkpoint(checkpoint: Any) -> Path:
    """The ``last.pt`` of a Ray checkpoint as a local file of its own, to resume from."""
    resume = Path(tempfile.mkdtemp(prefix="pat_ray_resume_")) / LAST
    with opened_checkpoint(checkpoint) as path:
        shutil.copyfile(path, resume)
    return resume


def check_data_root(root: str | None, collective) -> None:
    """Every rank checks its own node's data root before the first epoch; when any lacks it,
    every rank raises (none is left waiting in a collective), naming the node and path."""
    import ray

    from pat_ray.errors import DataRootError

    missing = None
    if root is not None and not Path(root).exists():
        missing = f"rank {collective.rank} on node {ray.get_runtime_context().get_node_id()[:12]}"
    lacking = [where for where in collective.gather(missing) if where is not None]
    if lacking:
        raise DataRootError(
            f"data root {root!r} does not exist on the worker node(s) of {', '.join(lacking)}: stage the data "
            "there (or use a path every node mounts) and run again"
        )


class RayReporter:
    """Every epoch's metrics, with the rank and node that saw them, to ``send`` (Train's report,
    or a one-worker task's stream); rank 0 attaches the epoch's checkpoint."""

    def __init__(self, collective, node_id: str, send: Send) -> None:
        self.collective, self.node_id, self.send = collective, node_id, send
        self.report_seconds = 0.0  # Ray's own cost of the previous report, sent with the next

    def note(self, text: str) -> None:
        if self.collective.rank == 0:
            print(text, flush=True)  # Ray forwards worker output to the driver's console

    def epoch_progress(self, epoch: int, images: int) -> EpochProgress:
        """Rank 0's: plain lines (a worker's output is forwarded, never a terminal)."""
        return ProgressLines(epoch, images, self.note) if self.collective.rank == 0 else NoProgress()

    def report(self, metrics: dict[str, Any], checkpoint: Path | None = None) -> None:
        metrics = {
            **metrics,
            "rank": self.collective.rank,
            "node_id": self.node_id,
            "gossip_seconds": self.collective.gossip_seconds,
            "gossip_bytes": self.collective.gossip_bytes,
            "previous_report_seconds": self.report_seconds,
        }
        started = time.perf_counter()
        self.send(metrics, checkpoint)
        self.report_seconds = time.perf_counter() - started


def train_report(metrics: dict[str, Any], checkpoint: Path | None) -> None:
    """A Train worker's report (a barrier: every rank reports each epoch)."""
    import ray.train

    report_with_checkpoint(ray.train.report, ray.train.Checkpoint, metrics, checkpoint)


def report_with_checkpoint(report, checkpoint_type, metrics: dict[str, Any], path: Path | None) -> None:
    """Hand ``metrics`` and the file at ``path`` to Ray's ``report`` (Train's or Tune's).

    Ray takes a directory and persists it to the run's storage; ``last.pt`` enters a fresh
    folder as a hard link (a copy only where the filesystem has none), so the file is written
    once by the engine and once by Ray's upload."""
    if path is None:
        report(metrics)
        return
    with tempfile.TemporaryDirectory(dir=path.parent) as folder:
        try:
            os.link(path, Path(folder) / LAST)
        except OSError:
            shutil.copy2(path, Path(folder) / LAST)
        report(metrics, checkpoint=checkpoint_type.from_directory(folder))
