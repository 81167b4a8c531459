"""pat_ray: pruning-aware training with the Early Pruning Indicator.

Public API: ``run`` / ``load_config`` / ``Config`` (a PaT pipeline, returning a ``RunResult``),
``PaT`` (pruning-aware training with EPI inside a training loop of your own), ``trust`` (modules
a config's or checkpoint's import paths may be imported from),
``oracle`` (EPI against a grid of start epochs, on Ray Tune) and ``read_oracle`` (a finished
sweep's ``OracleSummary``), ``prune`` (one-shot structural pruning), ``measure_cost``,
``measure_latency`` (per-layer timings for a budget in training-step time),
``save_checkpoint`` / ``load_checkpoint``, ``export_model`` (a run's pruned model as a file
that loads without pat_ray), the exceptions these raise, and ``hookimpl`` / ``LayerRule`` for
plugin authors (``pat_ray.sdk`` holds the rest of their surface).

Names are imported on first use (``import pat_ray`` stays light, and plugin modules can import
``pat_ray.hookimpl`` while the registry is being built); type checkers read the imports below.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from pat_ray.lazy import lazy_names
from pat_ray.plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from pat_ray.api import oracle, run
    from pat_ray.config import Config, load_config
    from pat_ray.core.cost.flops import measure_cost
    from pat_ray.core.cost.probe import measure_latency
    from pat_ray.core.data import DataBundle
    from pat_ray.core.kinds import BUDGET_TOLERANCE
    from pat_ray.errors import (
        BudgetError,
        CheckpointError,
        ConfigError,
        ExportError,
        PluginError,
        PluginFailure,
        PrunedModelError,
        ResumeChangesRunError,
        RunFinishedError,
        RunInUseError,
        TrainingDivergedError,
        UnsupportedModelError,
        UntrustedCodeError,
    )
    from pat_ray.export import export_model
    from pat_ray.plugins.user_code import trust
    from pat_ray.sweep.plan import OracleSummary
    from pat_ray.sweep.plan import read_summary as read_oracle
    from pat_ray.tracer.layers.declared import LayerRule
    from pat_ray.training.checkpoint import load_checkpoint, save_checkpoint
    from pat_ray.training.pat import PaT
    from pat_ray.training.prune import prune
    from pat_ray.training.records import EpochRecord, RunResult

_LAZY = {  # public name -> (module, name there)
    "LayerRule": ("pat_ray.tracer.layers.declared", "LayerRule"),
    "run": ("pat_ray.api", "run"),
    "oracle": ("pat_ray.api", "oracle"),
    "Config": ("pat_ray.config", "Config"),
    "load_config": ("pat_ray.config", "load_config"),
    "read_oracle": ("pat_ray.sweep.plan", "read_summary"),
    "OracleSummary": ("pat_ray.sweep.plan", "OracleSummary"),
    "RunResult": ("pat_ray.training.records", "RunResult"),
    "EpochRecord": ("pat_ray.training.records", "EpochRecord"),
    "prune": ("pat_ray.training.prune", "prune"),
    "PaT": ("pat_ray.training.pat", "PaT"),
    "trust": ("pat_ray.plugins.user_code", "trust"),
    "DataBundle": ("pat_ray.core.data", "DataBundle"),
    "measure_cost": ("pat_ray.core.cost.flops", "measure_cost"),
    "BUDGET_TOLERANCE": ("pat_ray.core.kinds", "BUDGET_TOLERANCE"),
    "measure_latency": ("pat_ray.core.cost.probe", "measure_latency"),
    "save_checkpoint": ("pat_ray.training.checkpoint", "save_checkpoint"),
    "load_checkpoint": ("pat_ray.training.checkpoint", "load_checkpoint"),
    "export_model": ("pat_ray.export", "export_model"),
    # what the calls above raise
    "ConfigError": ("pat_ray.errors", "ConfigError"),
    "BudgetError": ("pat_ray.errors", "BudgetError"),
    "UnsupportedModelError": ("pat_ray.errors", "UnsupportedModelError"),
    "PrunedModelError": ("pat_ray.errors", "PrunedModelError"),
    "CheckpointError": ("pat_ray.errors", "CheckpointError"),
    "ExportError": ("pat_ray.errors", "ExportError"),
    "PluginError": ("pat_ray.errors", "PluginError"),
    "PluginFailure": ("pat_ray.errors", "PluginFailure"),
    "UntrustedCodeError": ("pat_ray.errors", "UntrustedCodeError"),
    "TrainingDivergedError": ("pat_ray.errors", "TrainingDivergedError"),
    "RunInUseError": ("pat_ray.errors", "RunInUseError"),
    "ResumeChangesRunError": ("pat_ray.errors", "ResumeChangesRunError"),
    "RunFinishedError": ("pat_ray.errors", "RunFinishedError"),
}

__all__ = [
    "hookimpl",
    "LayerRule",
    "__version__",
    "run",
    "oracle",
    "Config",
    "load_config",
    "read_oracle",
    "OracleSummary",
    "RunResult",
    "EpochRecord",
    "prune",
    "PaT",
    "trust",
    "DataBundle",
    "measure_cost",
    "BUDGET_TOLERANCE",
    "measure_latency",
    "save_checkpoint",
    "load_checkpoint",
    "export_model",
    "ConfigError",
    "BudgetError",
    "UnsupportedModelError",
    "PrunedModelError",
    "CheckpointError",
    "ExportError",
    "PluginError",
    "PluginFailure",
    "UntrustedCodeError",
    "TrainingDivergedError",
    "RunInUseError",
    "ResumeChangesRunError",
    "RunFinishedError",
]

try:
    __version__ = version("pat-ray")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"


__getattr__, __dir__ = lazy_names(__name__, _LAZY, __all__)
