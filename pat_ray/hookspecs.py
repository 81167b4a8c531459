"""The hooks a pat_ray plugin may implement (pluggy project ``pat_ray``).

Registration hooks receive a ``register(name, factory)`` callback; calling it makes
``name`` selectable in configs and in the Python API. Observer hooks are called by the
training engine; their return values are ignored.
"""

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("pat_ray")
hookimpl = HookimplMarker("pat_ray")


@hookspec
def pat_ray_register_criteria(register):
    """Register importance criteria: ``register(name, factory)``, where ``factory(**params)``
    returns a :class:`pat_ray.core.criterion.Criterion`."""


@hookspec
def pat_ray_register_similarity_metrics(register):
    """Register architecture similarity metrics: ``register(name, factory)``, where
    ``factory(**params)`` returns a callable ``(Architecture, Architecture) -> float`` in [0, 1]."""


@hookspec
def pat_ray_register_surgery_backends(register):
    """Register surgery backends: ``register(name, factory)``, where ``factory()`` returns an
    object with ``apply(model, graph, architecture, optimizer=None)`` that shrinks the model
    in place and remaps the optimizer state of the kept channels."""


@hookspec
def pat_ray_register_models(register):
    """Register model builders: ``register(name, factory)``, where
    ``factory(num_classes=..., **params)`` returns an ``nn.Module``."""


@hookspec
def pat_ray_register_datasets(register):
    """Register datasets: ``register(name, factory)``; see ``pat_ray.data`` for the contract.

    A factory may carry a ``check(**params)`` attribute that raises ``ValueError`` or
    ``OSError`` for params it cannot use (missing files, say): config validation calls it,
    so ``pat-ray validate`` reports the problem instead of the run's first second."""


@hookspec
def pat_ray_on_epoch_end(epoch, metrics):
    """Called after every training epoch with the epoch index and that epoch's metrics dict."""


@hookspec
def pat_ray_on_prune(epoch, step, architecture, metrics):
    """Called after every pruning step with the architecture now in effect (base-model indices)."""
