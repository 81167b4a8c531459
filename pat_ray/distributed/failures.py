"""How a Ray run ends, in the one line a user needs: for Train's worker groups and for the
one-task runs of a single worker alike, so both paths fail with the same words.

Ray wraps what a worker raised: Train in a ``WorkerGroupError`` (``worker_failures``) or a
controller failure, a task in a ``RayTaskError`` (``cause``); ``wrapped`` walks all of them.
"""

from __future__ import annotations

from collections.abc import Iterator

from pat_ray.config import Config
from pat_ray.distributed import ray_private
from pat_ray.errors import DataRootError, RayRunError, TrainingDivergedError


def explained(error: BaseException, config: Config) -> BaseException:
    """The one line a user needs, for the ways a cluster run ends that pat_ray can name; for a
    task's error, the error the task raised (its traceback stays in Ray's wrapper, which the
    caller chains)."""
    for cause in wrapped(error):
        if isinstance(cause, DataRootError):
            return RayRunError(str(cause))
    given = bad_input(error)
    if given is not None:
        return given
    if is_startup_timeout(error):
        return resources_never_came(config)
    raised = getattr(error, "cause", None) if _is_rays_wrapper(error) else None
    return raised if isinstance(raised, Exception) else error  # what the task raised, as --local raises it


def is_startup_timeout(error: BaseException) -> bool:
    """Whether Train gave up because its workers' resources never appeared (a lost node)."""
    return any(isinstance(cause, ray_private.startup_timeout_type()) for cause in wrapped(error))


def is_fatal(error: BaseException) -> bool:
    """Whether a restart would fail the same way: what the user gave is wrong, a node lacks the
    data, or the loss diverged (a restart replays the same batches from the last good checkpoint)."""
    repeats = (DataRootError, TrainingDivergedError)
    return any(isinstance(cause, repeats) for cause in wrapped(error)) or bad_input(error) is not None


def bad_input(error: BaseException) -> ValueError | None:
    """What a worker found wrong with what the user gave (a model that returns no logits, labels
    that are not classes, a factory that raises: a ``ValueError``, as ``--local`` reports it):
    the same one line a local run shows, not the worker's traceback. Ray's own wrapper of a
    task's error is also a ``ValueError`` then (it subclasses the cause): the cause is returned."""
    for failure in [*getattr(error, "worker_failures", {}).values(), error]:
        for cause in wrapped(failure):
            if isinstance(cause, ValueError) and not _is_rays_wrapper(cause):
                return cause
    return None


def resources_never_came(config: Config) -> RayRunError:
    gpu = ", 1 GPU" if config.scaling.use_gpu else ""
    cpus = config.scaling.cpus_per_worker or 1
    workers = config.scaling.num_workers
    return RayRunError(
        f"waited {config.scaling.resource_wait_s:g} s (scaling.resource_wait_s) for {workers} "
        f"worker{'s' if workers > 1 else ''} ({cpus} CPU{gpu} each); the cluster has {_alive()}. "
        "A node was lost or never joined",
        resumable=True,
    )


def wrapped(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it wraps: Train's controller failure, a task's cause, or the cause it was raised from."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        inner = getattr(cause, "controller_failure", None) or getattr(cause, "cause", None)
        cause = inner if isinstance(inner, BaseException) else cause.__cause__


def _is_rays_wrapper(error: BaseException) -> bool:
    from ray.exceptions import RayTaskError

    return isinstance(error, RayTaskError)


def _alive() -> str:
    import ray

    nodes = [node for node in ray.nodes() if node["Alive"]]
    resources = ray.available_resources()
    gpus = f", {resources.get('GPU', 0):g} GPUs" if "GPU" in ray.cluster_resources() else ""
    return f"{len(nodes)} node(s) alive, {resources.get('CPU', 0):g} CPUs free{gpus}"
