"""The Python API mirrored by the CLI: load a config, run it."""

from __future__ import annotations

from pat_ray.comm import PrintReporter, Reporter, SilentReporter
from pat_ray.config import Config, load_config
from pat_ray.engine import RunResult, train


def run(
    config: Config | None = None, *, local: bool = False, quiet: bool = False, reporter: Reporter | None = None
) -> RunResult:
    """Run one PaT pipeline (``Config()`` is the default digits pipeline).

    By default on Ray Train with ``config.scaling.num_workers`` workers (a local Ray is
    started if none is running); ``local=True`` runs the same engine in this process. With
    ``tracking.mlflow`` the finished run is logged to MLflow (``result.mlflow_run_id``).
    """
    config = config or Config()
    if local:
        result = train(config, reporter=reporter or (SilentReporter() if quiet else PrintReporter()))
    else:
        from pat_ray.ray_train import run_on_ray

        result = run_on_ray(config)
    if config.tracking.mlflow:
        from pat_ray.tracking import log_run

        result.mlflow_run_id = log_run(config, result)
    return result


__all__ = ["run", "load_config", "Config", "RunResult"]
