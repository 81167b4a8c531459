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
    started if none is running); ``local=True`` runs the same engine in this process.
    """
    config = config or Config()
    if not local:
        from pat_ray.ray_train import run_on_ray

        return run_on_ray(config)
    reporter = reporter or (SilentReporter() if quiet else PrintReporter())
    return train(config, reporter=reporter)


__all__ = ["run", "load_config", "Config", "RunResult"]
