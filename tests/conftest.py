"""Shared fixtures: one local Ray (2 CPUs, like CI) for every Ray test in the session."""

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
