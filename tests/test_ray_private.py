"""Ray's private details live in one module, and the installed Ray still has each of them."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

pytest.importorskip("ray")

from pat_ray.distributed import ray_private  # noqa: E402

PACKAGE = Path(__file__).parents[1] / "pat_ray"


def test_the_installed_ray_is_the_minor_version_the_private_details_were_read_from():
    import ray

    minor = ".".join(ray.__version__.split(".")[:2])
    assert minor == ray_private.RAY_VERSION_READ, (
        f"Ray {ray.__version__} is installed, but pat_ray/distributed/ray_private.py was read from "
        f"{ray_private.RAY_VERSION_READ}: re-read each detail there against the new Ray, then update the pin"
    )


def test_every_private_detail_still_exists_in_the_installed_ray():
    from ray.train.v2._internal import constants
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError  # noqa: F401
    from ray.train.v2._internal.execution import context  # noqa: F401

    source = Path(constants.__file__).read_text()
    for name in ray_private.TRAIN_ENV_VARS:
        assert f'"{name}"' in source, f"Ray Train no longer reads {name} (ray/train/v2/_internal/constants.py)"
    assert constants.DEFAULT_WORKER_GROUP_START_TIMEOUT_S > 0
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback  # noqa: F401  (torch_trainer_without_datasets)
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    assert callable(getattr(DataParallelTrainer, "_create_default_callbacks", None))
    from ray._private.runtime_env import constants as runtime_constants

    assert runtime_constants.RAY_JOB_CONFIG_JSON_ENV_VAR == ray_private.JOB_CONFIG_JSON
    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed  # (uploaded_py_modules)
    from ray._private.services import canonicalize_bootstrap_address  # noqa: F401  (running_local_cluster)

    assert {"runtime_env", "include_gitignore", "scratch_dir"} <= set(
        inspect.signature(upload_py_modules_if_needed).parameters
    )


def test_no_other_module_touches_rays_private_api():
    private = re.compile(r"ray\.[\w.]*_internal|ray\._private|\"RAY_(?!ADDRESS\b)[A-Z_]+\"")
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "ray_private.py" and private.search(path.read_text())
    ]
    assert offenders == []


def test_a_startup_timeout_is_recognised_through_trains_wrapping():
    from ray.train import ControllerError
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    from pat_ray.distributed.failures import is_startup_timeout

    wrapped = ControllerError(WorkerGroupStartupTimeoutError(2))
    assert is_startup_timeout(wrapped)
    assert not is_startup_timeout(ControllerError(ValueError("other")))


def test_a_cluster_that_died_is_not_joined_though_ray_still_has_it_on_record(tmp_path, monkeypatch):
    """A killed ``ray start`` leaves ``ray_current_cluster`` behind; Ray hands that address to a
    bare ``ray.init()``, which then waits on it for ever. pat_ray starts its own instead."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    for folder in (tmp_path, tmp_path / "ray"):  # where this Ray version looks for the record
        (folder / "ray_current_cluster").write_text("127.0.0.1:9")  # port 9: nothing answers
    from ray._private.services import canonicalize_bootstrap_address

    assert str(canonicalize_bootstrap_address(None)).endswith(":9")  # what Ray itself would join
    assert ray_private.running_local_cluster() is None
