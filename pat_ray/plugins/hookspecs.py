"""The hooks a pat_ray plugin may implement (pluggy project ``pat_ray``).

Registration hooks receive a ``register(name, factory)`` callback; calling it makes
``name`` selectable in configs and in the Python API. ``factory`` may be the object or its
import path, ``"package.module:attribute"``: a path is imported when the name is first used, so
listing names (``pat-ray plugins``, ``pat-ray config``) imports neither the plugin's module nor
torch. A config's ``params`` become the
factory's keyword arguments, checked against its signature when the config is validated.
Observer hooks are called by the training engine; their return values are ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pluggy import HookimplMarker, HookspecMarker

if TYPE_CHECKING:
    from torch import nn

    from pat_ray.core.architecture import Architecture
    from pat_ray.core.contracts import SimilarityMetric, SurgeryBackend
    from pat_ray.core.criterion import Criterion
    from pat_ray.core.data import DataBundle
    from pat_ray.tracer.layers.declared import LayerRule

hookspec = HookspecMarker("pat_ray")
hookimpl = HookimplMarker("pat_ray")

Register = Callable[[str, Callable[..., Any]], None]


@hookspec
def pat_ray_register_criteria(register: Callable[[str, Callable[..., Criterion]], None]) -> None:
    """Register importance criteria: ``register(name, factory)``, where ``factory(**params)``
    returns a :class:`pat_ray.core.criterion.Criterion`.

    A factory may carry a ``check(**params)`` attribute that raises ``ValueError`` for values
    it cannot use: config validation calls it (validation builds nothing), so a bad value is
    reported by ``pat-ray validate``; without one, the criterion's own ``__init__`` reports it
    when the run starts."""


@hookspec
def pat_ray_register_similarity_metrics(register: Callable[[str, Callable[..., SimilarityMetric]], None]) -> None:
    """Register architecture similarity metrics: ``register(name, factory)``, where
    ``factory(**params)`` returns a :class:`pat_ray.core.contracts.SimilarityMetric`: a callable
    ``(Architecture, Architecture) -> float`` in [0, 1]."""


@hookspec
def pat_ray_register_surgery_backends(register: Callable[[str, Callable[..., SurgeryBackend]], None]) -> None:
    """Register surgery backends: ``register(name, factory)``, where ``factory()`` returns a
    :class:`pat_ray.core.contracts.SurgeryBackend`: an object whose ``apply(model, graph,
    architecture, optimizer=None)`` shrinks the model in place and remaps the optimizer state
    of the kept channels, then calls ``pat_ray.sdk.set_size_attributes(model, graph,
    architecture)`` (the head counts a forward writes into its reshapes). Every pruning step then
    runs the model once on the example input, so a backend that leaves it broken is caught at
    once, naming the layer."""


@hookspec
def pat_ray_register_models(register: Callable[[str, Callable[..., nn.Module]], None]) -> None:
    """Register model builders: ``register(name, factory)``, where
    ``factory(num_classes=..., **params)`` returns an ``nn.Module`` that torch.fx can trace."""


@hookspec
def pat_ray_register_datasets(register: Callable[[str, Callable[..., DataBundle]], None]) -> None:
    """Register datasets: ``register(name, factory)``, where ``factory(**params)`` returns a
    :class:`pat_ray.core.data.DataBundle`.

    A factory may carry a ``check(**params)`` attribute that raises ``ValueError`` or
    ``OSError`` for params it cannot use (missing files, say): config validation calls it,
    so ``pat-ray validate`` reports the problem instead of the run's first second."""


@hookspec
def pat_ray_register_layers(register: Callable[[str, LayerRule], None]) -> None:
    """Declare how custom modules treat channels: ``register(name, LayerRule(ModuleClass,
    maps=..., params=..., counts=..., macs=...))``. Instances of ``ModuleClass`` (that exact
    type) are then traced, pruned, sliced in the optimizer and costed like built-in layers
    instead of stopping the trace; see :class:`pat_ray.tracer.layers.declared.LayerRule`."""


@hookspec
def pat_ray_register_start_policies(register: Callable[[str, type], None]) -> None:
    """Register start policies: ``register(kind, PolicyClass)``, where ``PolicyClass``
    subclasses :class:`pat_ray.sdk.StartPolicy` with ``kind: Literal["<kind>"] = "<kind>"``,
    its own validated fields, and a ``decide(position, train_epochs, watched)`` saying whether
    pruning starts now. A config's ``start: {kind: <kind>, ...}`` then selects it, and
    ``oracle.policies`` may list it: the oracle runs it once per seed beside the built-ins."""


@hookspec
def pat_ray_on_epoch_end(epoch: int, metrics: dict[str, Any]) -> None:
    """Called after every training epoch (after its checkpoint is written) with the epoch
    and that epoch's :class:`pat_ray.training.records.EpochRecord` as a dict."""


@hookspec
def pat_ray_on_prune(epoch: int, step: int, architecture: Architecture, metrics: dict[str, float]) -> None:
    """Called after every pruning step with the architecture now in effect (base-model
    indices) and the model's ``flops``, ``params`` and the ``fraction`` of the budget reached."""
