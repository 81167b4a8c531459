"""Every private Ray detail pat_ray relies on, in one place.

Read from Ray 2.60.0 (``ray/train/v2/_internal/constants.py``, ``.../execution/context.py``,
``ray/_private/...``); pyproject pins that minor version, and ``tests/test_ray_private.py``
fails naming the missing piece when an installed Ray no longer has one. Everything else in
pat_ray uses Ray's public API.
"""

from __future__ import annotations

import logging
import os

RAY_VERSION_READ = "2.60"

# Train V2's controller polls each worker this often; a report waits for the poll (default 2 s).
HEALTH_CHECK_INTERVAL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
# Train V2 watches node drains (spot instances); its actor logs a C++ error line at start.
PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
# How long one attempt to start the worker group waits for resources (default 60 s); each
# attempt that times out counts against FailureConfig.controller_failure_limit (public).
WORKER_GROUP_START_TIMEOUT = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
# The port `ray.init` gives the GCS it starts (read once, by that GCS).
GCS_SERVER_PORT = "RAY_GCS_SERVER_PORT"

# Set by the job supervisor for a driver started by `ray job submit` (ray/_private/runtime_env/constants.py).
JOB_CONFIG_JSON = "RAY_JOB_CONFIG_JSON_ENV_VAR"

TRAIN_ENV_VARS = (HEALTH_CHECK_INTERVAL, PREEMPTION_WATCHER, WORKER_GROUP_START_TIMEOUT)


def in_submitted_job() -> bool:
    """A `ray job submit` driver: its runtime_env is the submission's, not ours to set."""
    return JOB_CONFIG_JSON in os.environ


def running_local_cluster() -> str | None:
    """The address of the live cluster a bare ``ray.init()`` joins on this machine (the latest
    ``ray start``, as Ray's ``canonicalize_bootstrap_address`` finds it), or None: start a new
    one (``ray.init(address="local")``). ``RAY_ADDRESS`` unset is the caller's to check."""
    from ray._private.services import canonicalize_bootstrap_address, find_gcs_addresses

    try:
        address = canonicalize_bootstrap_address(None)  # type: ignore[arg-type]  # None: "find one", as ray.init passes it
    except (ConnectionError, ValueError):
        return None
    # Ray reads that address from /tmp/ray/ray_current_cluster, which a cluster that died (a
    # killed `ray start`, a crashed machine) leaves behind: joining it would wait for ever. A
    # live one has a raylet on this machine pointing at it.
    return address if address in find_gcs_addresses() else None


def train_settings() -> dict[str, str]:
    """The Train settings set in this process, for the workers of a cluster it did not start
    (whose processes do not inherit this environment)."""
    return {name: os.environ[name] for name in TRAIN_ENV_VARS if name in os.environ}


def tune_local_train() -> None:
    """Settings for a Ray that pat_ray starts on this machine (a user's own values win)."""
    os.environ.setdefault(PREEMPTION_WATCHER, "0")  # nothing drains on one machine (ray-project/ray#53727)
    # How late the controller sees a worker's report or its end (Train's default: 2 s); each poll
    # is a round of Ray calls through three processes, which 20 times a second cost the epochs
    # about a tenth of their time on two cores
    os.environ.setdefault(HEALTH_CHECK_INTERVAL, "0.2")


def set_start_timeout(seconds: float) -> None:
    """One worker-group start attempt waits at most ``seconds`` for its resources."""
    os.environ[WORKER_GROUP_START_TIMEOUT] = f"{seconds:g}"


def start_timeout() -> float:
    from ray.train.v2._internal.constants import DEFAULT_WORKER_GROUP_START_TIMEOUT_S

    return float(os.environ.get(WORKER_GROUP_START_TIMEOUT, DEFAULT_WORKER_GROUP_START_TIMEOUT_S))


def startup_timeout_type() -> type[BaseException]:
    """What Train raises when its workers' resources never appeared (a lost node)."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    return WorkerGroupStartupTimeoutError


def quiet_report_logger(level: str) -> None:
    """Ray Train logs every report (~900 characters) at INFO through a logger named by its
    source file's path, outside the ``ray.train`` tree that LoggingConfig governs."""
    from ray.train.v2._internal.execution import context as train_context

    logging.getLogger(train_context.__file__).setLevel(level)


def uploaded_py_modules(paths: list[str]) -> list[str]:
    """Local folders or ``.py`` files uploaded to the cluster as ``ray.init`` uploads a job's
    ``py_modules`` (``ray/_private/runtime_env/py_modules.py``, ``upload_py_modules_if_needed``):
    their URIs, which an actor's runtime environment (Train's ``worker_runtime_env``) accepts,
    where a local path is accepted only by ``ray.init``."""
    import tempfile

    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed

    with tempfile.TemporaryDirectory(prefix="pat_ray_py_modules_") as scratch:
        env = upload_py_modules_if_needed({"py_modules": list(paths)}, include_gitignore=True, scratch_dir=scratch)
    return list(env["py_modules"])


def torch_trainer_without_datasets() -> type:
    """``TorchTrainer`` less Train's Ray Data support (``DatasetsCallback``, in
    ``DataParallelTrainer._create_default_callbacks``): with it, every run starts a
    ``DatasetManager`` actor, a process of its own that the workers' start waits for, although
    pat_ray hands Train no datasets (``ray.train.get_dataset_shard`` is never called)."""
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self) -> list:
            kept = super()._create_default_callbacks()  # type: ignore[misc]  # mypy reads Train V1; V2 at run time
            return [c for c in kept if not isinstance(c, DatasetsCallback)]

    return Trainer
