"""pat_ray: pruning-aware training with the Early Pruning Indicator.

Public API: ``run`` / ``load_config`` / ``Config`` (a PaT pipeline), ``oracle`` (EPI against
a grid of start epochs, on Ray Tune), ``read_oracle`` (a finished sweep's summary), ``prune`` (one-shot
structural pruning), ``measure_cost``, ``measure_latency`` (per-layer timings for a budget in
training-step time), ``save_checkpoint`` / ``load_checkpoint``, ``export_model`` (a run's pruned
model as a file that loads without pat_ray), and
``hookimpl`` and ``LayerRule`` (a custom module's channel map) for plugin authors.
"""

from pat_ray.core.custom_layers import LayerRule
from pat_ray.plugins.hookspecs import hookimpl

__all__ = [
    "hookimpl",
    "LayerRule",
    "prune",
    "measure_cost",
    "measure_latency",
    "save_checkpoint",
    "load_checkpoint",
    "export_model",
    "run",
    "oracle",
    "read_oracle",
    "load_config",
    "Config",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: plugin modules import ``pat_ray.hookimpl`` while the registry is being built.
    if name == "prune":
        from pat_ray.training.oneshot import prune

        return prune
    if name == "measure_cost":
        from pat_ray.core.cost import measure_cost

        return measure_cost
    if name == "measure_latency":
        from pat_ray.core.latency_probe import measure_latency

        return measure_latency
    if name == "export_model":
        from pat_ray.export import export_model

        return export_model
    if name == "read_oracle":
        from pat_ray.sweep.plan import read_summary

        return read_summary
    if name in ("run", "oracle", "load_config", "Config"):
        from pat_ray import api

        return getattr(api, name)
    if name in ("save_checkpoint", "load_checkpoint"):
        from pat_ray.training import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module 'pat_ray' has no attribute {name!r}")
