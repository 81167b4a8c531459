"""Shared fixtures: one local Ray (2 CPUs, like CI) for every Ray test in the session, and
plugins registered for one test only."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def local_ray():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # dashboard off 8265, which tests/test_cluster.py's `ray start --head` uses
    ray.init(num_cpus=2, include_dashboard=True, dashboard_port=8266, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory):
    """Runs track to MLflow by default: the suite's go to one store of its own, not to
    ./mlflow.db (subprocesses inherit the variable)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture
def plugins():
    """``register_plugin`` into a fresh registry for this test; forgotten when it ends, so a
    test's plugin never leaks into the next test's runs."""
    from pat_ray.plugins import registry

    registry.reset()
    yield registry.register_plugin
    registry.reset()


@pytest.fixture
def fresh_registry():
    """The built-ins and entry points only, rebuilt for this test and again after it."""
    from pat_ray.plugins import registry

    registry.reset()
    yield registry
    registry.reset()
