"""Shared fixtures: one local Ray (2 CPUs, like CI) for every Ray test in the session, and
plugins registered for one test only."""

from __future__ import annotations

import os
import socket

import pytest


@pytest.fixture(scope="session")
def local_ray():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # the dashboard on a free port: off the README's 8265, and off another pytest-xdist worker's Ray
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_port=port, log_to_driver=False)
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

    registry.unregister_plugins()
    yield registry.register_plugin
    registry.unregister_plugins()


@pytest.fixture
def fresh_registry():
    """The built-ins and entry points only, rebuilt for this test and again after it."""
    from pat_ray.plugins import registry

    registry.unregister_plugins()
    yield registry
    registry.unregister_plugins()


# Dummy credentials for the S3 server the tests start (moto accepts any): set before any Ray
# starts, so its workers and Train's controller, which read them from their environment, have them.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API server on loopback (moto's), with one bucket; yields ``bucket_uri(path)``,
    which makes an ``s3://`` URI that carries the endpoint, so every process reaches it."""
    server_module = pytest.importorskip("moto.server")
    import pyarrow.fs

    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    admin = pyarrow.fs.S3FileSystem(
        endpoint_override=endpoint, scheme="http", region="us-east-1", allow_bucket_creation=True
    )
    admin.create_dir("pat-ray-tests")

    def bucket_uri(path: str) -> str:
        return f"s3://pat-ray-tests/{path}?endpoint_override={endpoint}&scheme=http&region=us-east-1"

    yield bucket_uri
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on loopback (``mlflow server``), stopped after the session."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    folder = tmp_path_factory.mktemp("mlflow_server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--default-artifact-root",
            str(folder / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # no job runner: MLflow 3 starts eight worker processes for server-side jobs, which
        # these tests never use and which would take CPU from the runs under test
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail(f"mlflow server did not start on {url}")
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter):
    """One line at the end saying how to run what this machine skipped for want of data or rights."""
    skipped = terminalreporter.stats.get("skipped", [])
    reasons = " ".join(str(getattr(report, "longrepr", "")) for report in skipped)
    if "dataset-fashion-mnist" in reasons:
        terminalreporter.write_line(
            "note: the test on the real Fashion-MNIST files was skipped; to run it: "
            "sudo apt-get install dataset-fashion-mnist (Debian/Ubuntu), then pytest again"
        )
    if "mounting a tmpfs needs root" in reasons:
        terminalreporter.write_line("note: the full-disk test was skipped: it mounts a small tmpfs, which needs root")
