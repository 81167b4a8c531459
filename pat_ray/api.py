"""The Python API mirrored by the CLI: load a config, run it."""

from __future__ import annotations

from pat_ray.comm import PrintReporter, Reporter, SilentReporter
from pat_ray.config import Config, load_config
from pat_ray.engine import RunResult, train


def run(config: Config | None = None, *, quiet: bool = False, reporter: Reporter | None = None) -> RunResult:
    """Run one PaT pipeline in this process (``Config()`` is the default digits pipeline)."""
    reporter = reporter or (SilentReporter() if quiet else PrintReporter())
    return train(config or Config(), reporter=reporter)


__all__ = ["run", "load_config", "Config", "RunResult"]
