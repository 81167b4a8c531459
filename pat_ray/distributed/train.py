"""Ray Train shell: one PaT run on ``scaling.num_workers`` workers via TorchTrainer (Train V2).

Thin by design: each worker rebuilds the plugin registry and the validated config, then
runs the same engine as ``--local`` with a DistributedCollective and a reporter that hands
rank 0's ``last.pt`` to ``ray.train.report`` (every rank reports: it is a barrier). A
restarted worker group resumes from ``ray.train.get_checkpoint()``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from pat_ray.config import Config, config_from_dict
from pat_ray.tracking.live import LiveTarget
from pat_ray.training.collective import Reporter
from pat_ray.training.epoch_progress import EpochProgress, NoProgress, ProgressLines


def run_on_ray(
    config: Config,
    storage_path: Path | None = None,
    run_name: str | None = None,
    max_failures: int | None = None,
    callbacks: list | None = None,
    latency_table: dict | None = None,
    resume: Path | None = None,
    tracking: LiveTarget | None = None,
):
    """Run ``config`` with Ray Train; start a local Ray if none is running.

    Re-running with the same ``run_name`` and ``storage_path`` continues that run from its
    last checkpoint (the oracle relies on this to resume multi-worker trials).
    ``latency_table`` (a ``LatencyTable.to_dict()``) is handed to the workers' engine.
    ``resume``: a run's ``last.pt`` to continue from (on a cluster: on storage every node sees).
    Every checkpoint is also copied to ``output_dir/name/last.pt`` as it is reported, so an
    interrupted Ray run can be resumed like a local one. Plugins registered in this process
    with ``register_plugin`` are registered on every worker too. ``callbacks`` are extra
    Train ``UserCallback``s. ``tracking``: the MLflow run rank 0 logs each epoch into.
    """
    import torch
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pat_ray.core.latency import LatencyTable
    from pat_ray.distributed.progress import ProgressCallback, result_from_checkpoint
    from pat_ray.plugins.registry import shipped_plugins
    from pat_ray.training.checkpoint import atomic_write, read_checkpoint
    from pat_ray.training.latency_budget import TABLE_FILE, write_table

    start_ray()
    cpus = config.scaling.cpus_per_worker or cpus_per_worker(config.scaling.num_workers)
    storage = Path(storage_path or Path(config.output_dir) / "ray").resolve()
    name = run_name or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={
            "config": config.model_dump(mode="json"),
            "plugins": shipped_plugins(),
            "run_folder": str(storage / name),
            "latency_table": latency_table,
            "resume_path": str(resume) if resume is not None else None,
            "tracking": tracking,
            "threads": min(cpus, torch.get_num_threads()),  # what --local uses, shared among the workers
        },
        scaling_config=ScalingConfig(
            num_workers=config.scaling.num_workers,
            use_gpu=config.scaling.use_gpu,
            resources_per_worker={"CPU": cpus, **({"GPU": 1} if config.scaling.use_gpu else {})},
        ),
        torch_config=TorchConfig(backend="nccl" if config.scaling.use_gpu else "gloo"),
        run_config=RunConfig(  # type: ignore[call-arg]  # mypy sees Train V1's RunConfig; V2's at run time
            name=name,
            storage_path=str(storage),
            failure_config=FailureConfig(
                max_failures=config.scaling.max_failures if max_failures is None else max_failures
            ),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level=ray_log_level()),  # Train's own loggers (controller, workers)
            callbacks=[ProgressCallback(Path(config.output_dir) / config.name, config), *(callbacks or [])],  # type: ignore[list-item]
        ),
    )
    started = time.perf_counter()
    result = trainer.fit()
    local = Path(config.output_dir) / config.name / "last.pt"
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {name!r} ended without a checkpoint; see {storage / name}")
    with result.checkpoint.as_directory() as folder:  # the callback copied it too; make sure it is the final one
        data = (Path(folder) / "last.pt").read_bytes()
    atomic_write(local, lambda handle: handle.write(data))
    ckpt = read_checkpoint(local)
    if ckpt.extra.get("latency_table"):
        write_table(local.parent / TABLE_FILE, LatencyTable.from_dict(ckpt.extra["latency_table"]))
    return result_from_checkpoint(config, ckpt, local, time.perf_counter() - started)


def ray_log_level() -> str:
    """WARNING unless ``PAT_RAY_VERBOSE`` is set: our own per-epoch lines are printed, and Ray
    Train's INFO adds its set-up chatter and a ~900-character line per report."""
    import os

    return "INFO" if os.environ.get("PAT_RAY_VERBOSE") else "WARNING"


def start_ray() -> None:
    """A local Ray for this process, unless one is up; its workers and actors log at ``ray_log_level()``."""
    import ray

    if ray.is_initialized():
        return
    runtime_env, chosen = None, False
    if not os.environ.get("RAY_ADDRESS"):  # a new local Ray (on a cluster, ray job submit sets it)
        # Train's preemption watcher follows node drains (spot instances): nothing to watch on
        # one machine, and its actor logs an error line from C++ at start (ray-project/ray#53727)
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # A worker's report waits until Train's controller polls it (a one-slot queue), every
        # 2 s by default: longer than a short epoch. Polling 1-2 local workers often is cheap.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.05")
        # Train's placement-group cleaner looks the cluster up without an address and fails
        # when another Ray runs on the machine: our GCS gets a known port, its actors the address
        chosen = not os.environ.get("RAY_GCS_SERVER_PORT")  # else the user's port
        if chosen:
            os.environ["RAY_GCS_SERVER_PORT"] = str(_free_port())
        address = f"{ray.util.get_node_ip_address()}:{os.environ['RAY_GCS_SERVER_PORT']}"
        runtime_env = {"env_vars": {"RAY_ADDRESS": address}}
    context = ray.init(
        log_to_driver=True, logging_config=ray.LoggingConfig(log_level=ray_log_level()), runtime_env=runtime_env
    )
    if chosen:
        os.environ.pop("RAY_GCS_SERVER_PORT")  # read once, by the GCS just started
    if ray_log_level() != "INFO" and context.dashboard_url:  # Ray's own line about it is INFO
        print(f"Ray: a local instance started; dashboard at http://{context.dashboard_url}", flush=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


def cpus_per_worker(num_workers: int) -> int:
    """On a one-node Ray (a laptop, a CI box, one GPU machine), the node's cores shared among
    the workers: a one-worker run then trains with the threads --local would, and gets the
    same numbers. On a cluster, Ray's default of one (set ``scaling.cpus_per_worker``)."""
    import ray

    if len([node for node in ray.nodes() if node["Alive"]]) != 1:
        return 1
    return max(1, int(ray.cluster_resources().get("CPU", 1)) // num_workers)


def _worker_loop(loop_config: dict[str, Any]) -> None:
    import logging

    import ray.train
    import torch
    from ray.train.v2._internal.execution import context as train_context

    # Ray Train logs every report (~900 characters) at INFO through a logger named by its
    # source file's path, outside the `ray.train` tree that LoggingConfig governs
    logging.getLogger(train_context.__file__).setLevel(ray_log_level())
    from pat_ray.core.latency import LatencyTable
    from pat_ray.distributed.torch_collective import DistributedCollective
    from pat_ray.plugins.registry import install_shipped
    from pat_ray.tracking.live import TrackingReporter
    from pat_ray.training.engine import train

    install_shipped(loop_config["plugins"])
    torch.set_num_threads(loop_config["threads"])
    config = config_from_dict(loop_config["config"])
    context = ray.train.get_context()
    device = torch.device("cpu")
    if config.scaling.use_gpu:
        device = torch.device("cuda", context.get_local_rank())
        torch.cuda.set_device(device)
    config = config.model_copy(update={"training": config.training.model_copy(update={"device": device.type})})
    collective = DistributedCollective(device)
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        resume_dir = Path(tempfile.mkdtemp(prefix="pat_ray_resume_"))
        with checkpoint.as_directory() as folder:
            (resume_dir / "last.pt").write_bytes((Path(folder) / "last.pt").read_bytes())
        resume = resume_dir / "last.pt"
    elif loop_config.get("resume_path"):
        resume = Path(loop_config["resume_path"])
    reporter: Reporter = RayReporter(collective, Path(loop_config["run_folder"]))
    if loop_config["tracking"] is not None and collective.rank == 0:
        reporter = TrackingReporter(reporter, loop_config["tracking"])
    run_dir = Path(tempfile.mkdtemp(prefix=f"pat_ray_rank{collective.rank}_"))
    given = loop_config.get("latency_table")
    table = LatencyTable.from_dict(given) if given else None
    train(config.model_copy(update={"output_dir": run_dir}), collective, reporter, resume=resume, latency_table=table)


class RayReporter:
    """Reports every epoch to Ray Train; rank 0 attaches the epoch's checkpoint.

    Each rank also appends its metrics to ``<run folder>/ranks/rank<N>.jsonl`` so that what
    every rank saw (fingerprints, trigger epoch) can be checked after the run.
    """

    def __init__(self, collective, run_folder: Path) -> None:
        self.collective = collective
        self.rank_log = run_folder / "ranks" / f"rank{collective.rank}.jsonl"
        self.rank_log.parent.mkdir(parents=True, exist_ok=True)

    def note(self, text: str) -> None:
        if self.collective.rank == 0:
            print(text, flush=True)  # Ray forwards worker output to the driver's console

    def epoch_progress(self, epoch: int, images: int) -> EpochProgress:
        """Rank 0's: plain lines (a worker's output is forwarded, never a terminal)."""
        return ProgressLines(epoch, images, self.note) if self.collective.rank == 0 else NoProgress()

    def report(self, metrics: dict[str, Any], checkpoint: Path | None = None) -> None:
        import ray.train

        metrics = {
            **metrics,
            "rank": self.collective.rank,
            "gossip_seconds": self.collective.gossip_seconds,
            "gossip_bytes": self.collective.gossip_bytes,
        }
        started = time.perf_counter()
        report_with_checkpoint(ray.train.report, ray.train.Checkpoint, metrics, checkpoint)
        metrics["report_seconds"] = time.perf_counter() - started  # Ray's own cost of this epoch
        with self.rank_log.open("a") as log:
            log.write(json.dumps(metrics) + "\n")


def report_with_checkpoint(report, checkpoint_type, metrics: dict[str, Any], path: Path | None) -> None:
    """Hand ``metrics`` and the file at ``path`` to Ray's ``report`` (Train's or Tune's).

    Ray takes a directory and persists it to the run's storage, so ``last.pt`` goes into a
    temporary folder that Ray copies before this returns.
    """
    if path is None:
        report(metrics)
        return
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy2(path, Path(folder) / "last.pt")
        report(metrics, checkpoint=checkpoint_type.from_directory(folder))
