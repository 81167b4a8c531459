"""The driver's Ray shell: start or join Ray, then one PaT run on ``scaling.num_workers``
workers: several through Ray Train's TorchTrainer (Train V2), one as a single Ray task
(``one_worker.py``).

Thin by design: each worker rebuilds the plugin registry and the validated config, checks its
data root, then runs the same engine as ``--local`` with a DistributedCollective and a reporter
that hands rank 0's ``last.pt`` to ``ray.train.report`` (every rank reports: it is a barrier).
Everything the driver's side needs (the run folder's files, MLflow's per-epoch metrics, the
progress lines) is done by ``ProgressCallback`` in Train's controller, which runs on the
driver's node, from what the workers reported; a worker never writes to the run folder or
talks to the tracking store. A restarted worker group resumes from ``ray.train.get_checkpoint()``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import socket
import sysconfig
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pat_ray.config import Config
from pat_ray.distributed import ray_private
from pat_ray.distributed.failures import explained
from pat_ray.distributed.worker import TASK, WorkerTask, worker_loop
from pat_ray.plugins.user_code import split_target, trusted_modules
from pat_ray.run_folder import RunFolder
from pat_ray.storage import Location
from pat_ray.tracking.live import LiveTarget
from pat_ray.training.records import RunResult
from pat_ray.training.setup import Given

T = TypeVar("T")

RAY_RUN = "ray_run.json"  # the Ray Train run (storage + name) behind a run folder, for a same-name restart


def recorded_ray_run(folder: Location) -> tuple[Location, str] | None:
    """The Ray Train run that wrote ``folder``, when its storage still holds it: ``--resume``
    then restarts it by name, and Train's workers continue from its latest checkpoint."""
    try:
        recorded = json.loads((folder / RAY_RUN).read_text())
        storage, name = Location.of(recorded["storage"]), recorded["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (storage, name) if (storage / name).exists() else None


def run_on_ray(
    config: Config,
    storage: Location | None = None,
    run_name: str | None = None,
    callbacks: list | None = None,
    latency_table: dict | None = None,
    resume: Path | None = None,
    tracking: LiveTarget | None = None,
    run_folder: RunFolder | None = None,
    given: Given | None = None,
) -> RunResult:
    """Run ``config`` on Ray; start a local Ray if none is running. Several workers train with
    Ray Train; one worker in one Ray task (``one_worker.py``: Train's controller and worker group
    would cost it more than they give), unless it continues a Train run by name.

    ``storage``: Ray Train's storage (default ``output_dir/ray/name``: a folder, or a URI every
    node reaches); ``run_name``: the Ray Train run in it (default: the run folder's version).
    Re-running with the same ``run_name`` and storage continues that run from its last
    checkpoint (the oracle relies on this to resume multi-worker trials); ``callbacks``: Train's,
    added to the run's. ``resume``: a local ``last.pt`` to continue from; it travels to the
    workers through Ray's object store. Every checkpoint is copied to ``run_folder`` (default: a
    new version folder in ``output_dir/name``) as it is reported, with ``history.json``, so an
    interrupted run resumes like a local one. Plugins registered in this process with
    ``register_plugin`` reach every worker. ``tracking``: the MLflow run each epoch is logged
    into, from the driver's node.
    """
    py_modules, submitted = shipped_code(config), ray_private.in_submitted_job()  # a submission ships its own
    start_ray(py_modules)
    cpus = config.scaling.cpus_per_worker or cpus_per_worker(config.scaling.num_workers)
    if run_folder is None:
        run_folder = RunFolder.new(config.runs_folder())
        run_folder.point_latest()
    folder = run_folder.location
    runtime_env = None if submitted else _worker_runtime_env(py_modules)
    task = _worker_task(config, given, latency_table, resume, cpus)
    if config.scaling.num_workers == 1 and storage is None and run_name is None and not callbacks:
        from pat_ray.distributed.one_worker import run_in_one_task

        gpus = 1 if config.scaling.use_gpu else 0
        options = {"num_cpus": cpus, "num_gpus": gpus, "runtime_env": runtime_env, "name": f"pat_ray[{config.name}]"}
        return _interruptible(lambda: run_in_one_task(config, task, folder, tracking, options))
    warn_if_unshared(folder)  # Train's storage; a task's checkpoints come to the driver
    storage = storage or Location.of(config.output_dir) / "ray" / config.name
    name = run_name or folder.name
    (folder / RAY_RUN).write_text(json.dumps({"storage": storage.uri, "name": name}))
    from pat_ray.distributed.progress import ProgressCallback
    from pat_ray.distributed.recorder import final_result

    progress = ProgressCallback(folder, storage, config, tracking)
    trainer = _trainer(config, task, cpus, storage, name, runtime_env, [progress, *(callbacks or [])])
    started = time.perf_counter()
    _fit(trainer, config)
    return final_result(config, folder, time.perf_counter() - started)


def _trainer(
    config: Config, task: WorkerTask, cpus: int, storage: Location, name: str, runtime_env: dict | None, callbacks: list
):
    """The ``TorchTrainer`` of a run on ``scaling.num_workers`` workers, ``cpus`` each, saving to ``storage/name``."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    storage_fs, storage_path = storage.filesystem()
    attempt_s = min(ray_private.start_timeout(), config.scaling.resource_wait_s)
    ray_private.set_start_timeout(attempt_s)  # read by Train's controller when fit() starts it
    return ray_private.torch_trainer_without_datasets()(
        worker_loop,
        train_loop_config={TASK: task},
        scaling_config=ScalingConfig(
            num_workers=config.scaling.num_workers,
            use_gpu=config.scaling.use_gpu,
            resources_per_worker={"CPU": cpus, **({"GPU": 1} if config.scaling.use_gpu else {})},
        ),
        torch_config=TorchConfig(backend="nccl" if config.scaling.use_gpu else "gloo"),
        run_config=RunConfig(  # type: ignore[call-arg]  # mypy sees Train V1's RunConfig; V2's at run time
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(  # type: ignore[call-arg]  # V2's FailureConfig at run time
                max_failures=config.scaling.max_failures,
                # each start attempt that times out waiting for resources counts here
                controller_failure_limit=max(0, math.ceil(config.scaling.resource_wait_s / attempt_s) - 1),
            ),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level=ray_log_level()),  # Train's own loggers (controller, workers)
            callbacks=callbacks,
            worker_runtime_env=runtime_env,
        ),
    )


def _worker_task(
    config: Config, given: Given | None, latency_table: dict | None, resume: Path | None, cpus: int
) -> WorkerTask:
    """What every worker gets: the config and what it cannot rebuild from it on its own."""
    import ray
    import torch

    from pat_ray.plugins.registry import shipped_plugins

    return WorkerTask(
        config=config.model_dump(mode="json"),
        plugins=shipped_plugins(),
        trusted=sorted(trusted_modules()),  # what this process may import for targets, the workers too
        given=given or Given(),  # objects handed over in Python: Ray pickles them to the workers
        latency_table=latency_table,
        resume=ray.put(resume.read_bytes()) if resume is not None else None,
        threads=min(cpus, torch.get_num_threads()),  # what --local uses, shared among the workers
        ray_log_level=ray_log_level(),
    )


def _fit(trainer, config: Config) -> None:
    """``trainer.fit()``, interruptible; how it failed, in the user's words."""
    try:
        _interruptible(trainer.fit)
    except Exception as err:
        raise explained(err, config) from None


def _interruptible(work: Callable[[], T]) -> T:
    """``work()`` in a thread, so Ctrl-C and SIGTERM reach this one at once, also while Ray waits
    for resources, and as they were raised: a signal that lands inside a blocking Ray call
    (``ray.get``, ``ray.wait``) comes out of it as a plain ``KeyboardInterrupt``, and a SIGTERM
    would then read as Ctrl-C. The run stops with the driver's Ray connection."""
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["value"] = work()
        except BaseException as err:  # handed to the calling thread
            outcome["error"] = err

    thread = threading.Thread(target=call, name="pat_ray-run", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.2)
    except BaseException:
        drop_ray_connection()
        thread.join(STOP_WAIT_S / 2)  # work() returns once its Ray calls fail: no thread is inside Ray at exit
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


STOP_WAIT_S = 8.0  # a stopped run is gone within this (plus the process exit), even on a busy machine


def drop_ray_connection() -> None:
    """``ray.shutdown()``, which ends the controller and workers this driver owns (the run folder
    keeps the last finished epoch), given at most half of ``STOP_WAIT_S``: a user who pressed
    Ctrl-C waits for no cluster that is slow to answer."""
    import ray

    closing = threading.Thread(target=ray.shutdown, name="pat_ray-shutdown", daemon=True)
    closing.start()
    closing.join(STOP_WAIT_S / 2)


def warn_if_unshared(folder: Location) -> None:
    """A local run folder on a multi-node cluster only works when it is a shared filesystem."""
    import ray

    nodes = len([node for node in ray.nodes() if node["Alive"]])
    if folder.is_local and nodes > 1 and not os.environ.get("PAT_RAY_SHARED"):
        print(
            f"note: output_dir is a local folder ({folder}) on a {nodes}-node Ray cluster: Ray Train's checkpoints "
            "must be on storage every node reaches (s3://, gs://, NFS); set output_dir to a URI unless this "
            "folder is shared (then set PAT_RAY_SHARED to its mount to silence this)",
            flush=True,
        )


def ray_log_level() -> str:
    """Train's own lines only when ``PAT_RAY_VERBOSE`` is set: our per-epoch lines are printed,
    every failure pat_ray can name is one line from the driver, and Train otherwise logs each
    retry with a traceback (a lost node: one per start attempt)."""
    return "INFO" if os.environ.get("PAT_RAY_VERBOSE") else "CRITICAL"


def _worker_runtime_env(py_modules: list[str]) -> dict | None:
    """The Train workers' own ``py_modules``, for code the job's runtime environment lacks (a
    plugin registered after this process started Ray, or a Ray started by someone else): the
    job's already uploaded modules, by their URIs (a worker's own list replaces the job's, and
    the local folders they came from may be gone), plus the missing folders, uploaded now (an
    actor's runtime environment takes URIs only). None: the job's environment ships everything."""
    import ray

    context = ray.get_runtime_context()
    shipped = _shipped_with_job.get(context.get_job_id(), set())
    missing = [path for path in py_modules if path not in shipped]
    if not missing:
        return None
    job = list(context.runtime_env.get("py_modules") or [])
    return {"py_modules": job + ray_private.uploaded_py_modules(missing)}


_shipped_with_job: dict[str, set[str]] = {}  # by Ray job: the folders start_ray handed to its py_modules


def shipped_code(config: Config) -> list[str]:
    """What Ray's ``py_modules`` carries to every node: the user's own code the config names and
    the sources of the plugins registered in this process (``register_plugin``)."""
    from pat_ray.plugins.registry import plugin_sources

    return sorted({*user_code_paths(config), *plugin_sources()})


def user_code_paths(config: Config) -> list[str]:
    """The folders (or files) of the modules the config's targets import: a job started here
    ships them to every node with Ray's ``py_modules``, as Ray documents for code a cluster's
    nodes do not have (a job submitted with ``--working-dir`` carries its own). Installed
    packages are left to each node's environment."""
    installed = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    paths = []
    for target in (config.model.target, config.data.target):
        if target is None:
            continue
        top = split_target(target)[0].split(".")[0]
        spec = importlib.util.find_spec(top)
        if spec is not None and spec.submodule_search_locations:
            paths.append(str(Path(list(spec.submodule_search_locations)[0])))
        elif spec is not None and spec.origin and spec.origin.endswith(".py"):
            paths.append(spec.origin)
    return sorted({path for path in paths if not any(path.startswith(root) for root in installed)})


def start_ray(py_modules: list[str] | None = None) -> None:
    """A local Ray for this process, unless one is up; its workers and actors log at
    ``ray_log_level()``, and import ``py_modules`` (folders or files) wherever they run."""
    import ray

    if ray.is_initialized():
        return
    runtime_env: dict | None = None
    chosen = False
    given = os.environ.get("RAY_ADDRESS", "")
    if given.count(":") == 1 and "://" not in given and not ray_private.in_submitted_job():
        # a cluster's GCS: Train's helper actors, which look the cluster up without an address,
        # must find this one and not another Ray on the same machine
        runtime_env = {"env_vars": {"RAY_ADDRESS": given}}
    if not given:  # a Ray on this machine (on a cluster, ray job submit sets RAY_ADDRESS)
        ray_private.tune_local_train()
    joined = None if given else ray_private.running_local_cluster()  # a `ray start --head` on this machine
    if joined:  # joined, not restarted: its processes get the address and Train settings through runtime_env
        runtime_env = {"env_vars": {"RAY_ADDRESS": joined, **ray_private.train_settings()}}
    elif not given:  # a new local Ray
        # Train's placement-group cleaner looks the cluster up without an address and fails
        # when another Ray runs on the machine: our GCS gets a known port, its actors the address
        chosen = not os.environ.get(ray_private.GCS_SERVER_PORT)  # else the user's port
        if chosen:
            os.environ[ray_private.GCS_SERVER_PORT] = str(_free_port())
        address = f"{ray.util.get_node_ip_address()}:{os.environ[ray_private.GCS_SERVER_PORT]}"
        runtime_env = {"env_vars": {"RAY_ADDRESS": address}}
    if py_modules and not ray_private.in_submitted_job():
        runtime_env = {**(runtime_env or {}), "py_modules": py_modules}
    shipped = set((runtime_env or {}).get("py_modules", ()))  # read now: ray.init puts URIs in their place
    stops = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
    context = ray.init(
        address=joined or (None if given else "local"),  # "local": never the stale cluster a dead one left on record
        log_to_driver=True,
        logging_config=ray.LoggingConfig(log_level="INFO" if os.environ.get("PAT_RAY_VERBOSE") else "WARNING"),
        runtime_env=runtime_env,
    )
    _shipped_with_job[ray.get_runtime_context().get_job_id()] = shipped
    for signum, handler in stops.items():  # ray.init exits at once on SIGTERM; keep the caller's handler
        if callable(handler) and threading.current_thread() is threading.main_thread():
            signal.signal(signum, handler)
    if chosen:
        os.environ.pop(ray_private.GCS_SERVER_PORT)  # read once, by the GCS just started
    if not given and not os.environ.get("PAT_RAY_VERBOSE") and context.dashboard_url:  # Ray's line about it is INFO
        what = f"joined the running local cluster at {joined}" if joined else "a local instance started"
        print(f"Ray: {what}; dashboard at http://{context.dashboard_url}", flush=True)


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
