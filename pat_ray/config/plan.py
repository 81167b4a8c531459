"""When a run may start pruning, once its epochs have a length in iterations: the pruning steps
must end inside the schedule, with training left for the pruned model, whatever the start policy.

A config alone does not say how many iterations an epoch has (that is the data's size over the
batch size), so this is checked where both are known: ``pat-ray validate`` and the start of a
run. Pure arithmetic, so every case is a unit test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pat_ray.config.pipeline import Config
from pat_ray.config.start import BaseStartPolicy, WatchingStartPolicy

FINETUNE_SHARE = 0.25  # an automatic latest start leaves this share of training.epochs (>= 1 epoch) after pruning


class PlanError(ValueError):
    """The pruning steps do not fit the schedule; ``problems`` name what to change."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class PruningPlan:
    """Where pruning can start in a schedule of ``iters_per_epoch`` iterations per epoch.

    ``latest_start``: the epoch by whose end a watching policy (EPI, Early-Bird) starts pruning
    anyway; None for the others. ``problems`` make the run impossible (each names the fields
    to change and values that would work); ``notes`` are worth a warning."""

    iters_per_epoch: int
    pruning_iterations: int  # from the start of pruning to its last step, at most
    latest_start: int | None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def iterations_per_epoch(train_size: int, batch_size: int, workers: int = 1) -> int:
    """Each worker's batches per epoch: its share of the data (a distributed sampler pads the
    shares to equal size), in batches, the last one partial."""
    return max(1, math.ceil(math.ceil(train_size / max(1, workers)) / batch_size))


def pruning_iterations(steps: int, interval: int) -> int:
    """Iterations from the start of pruning until its last step has happened, at most: a step
    falls due once ``interval`` iterations have passed since the one before (the first may
    need as many, when no scores are at hand)."""
    return steps * (interval + 1)


def auto_latest_start(epochs: int, iters_per_epoch: int, pruning: int) -> int:
    """The latest start that leaves the pruning steps and ``FINETUNE_SHARE`` of the schedule
    (at least one epoch) to train the pruned model; negative when even a start at
    initialization would not."""
    finetune = max(1, math.ceil(FINETUNE_SHARE * epochs))
    return math.floor(epochs - finetune - pruning / iters_per_epoch)


def plan_pruning(config: Config, iters_per_epoch: int) -> PruningPlan:
    """The plan of ``config``'s run when each epoch has ``iters_per_epoch`` iterations per worker."""
    pruning = config.pruning
    return plan_for(config.start, config.training.epochs, pruning.steps, pruning.interval, iters_per_epoch)


def plan_for(policy: BaseStartPolicy, epochs: int, steps: int, interval: int, iters_per_epoch: int) -> PruningPlan:
    """The plan of ``policy`` in ``epochs`` epochs of ``iters_per_epoch`` iterations, for
    ``steps`` pruning steps ``interval`` iterations apart."""
    ipe = max(1, iters_per_epoch)
    needed = pruning_iterations(steps, interval)
    auto = auto_latest_start(epochs, ipe, needed)
    latest = policy.latest_epoch(max(0, auto))
    what = (
        f"the {steps} pruning steps take up to {needed} iterations (pruning.steps {steps} x "
        f"(pruning.interval {interval} + 1)) at {ipe} iterations per epoch"
    )
    problems: list[str] = []
    if policy.kind == "after_training":
        finetune = policy.extra_epochs(epochs)
        if finetune * ipe < needed:
            problems.append(
                f"start.finetune_epochs: {what}, more than the {finetune} fine-tuning epochs; set "
                f"start.finetune_epochs >= {math.ceil(needed / ipe)} or pruning.interval <= "
                f"{_interval_within(finetune * ipe, steps)}"
            )
    elif policy.grid_epoch is not None:
        problems += _start_fits("start.epoch", policy.grid_epoch, epochs, ipe, needed, what)
    elif latest is not None and getattr(policy, "latest_start", None) == "auto" and auto < 0:
        problems.append(_too_short(epochs, steps, ipe, needed, what))
    elif latest is not None:
        problems += _start_fits("start.latest_start", latest, epochs, ipe, needed, what)
    notes = _watch_notes(policy, latest, ipe, epochs) if isinstance(policy, WatchingStartPolicy) else []
    return PruningPlan(ipe, needed, latest, problems, [] if problems or latest is None else notes)


def _start_fits(key: str, start: int, epochs: int, ipe: int, steps: int, what: str) -> list[str]:
    """Pruning started at the end of epoch ``start`` must end within the schedule."""
    if start * ipe + steps <= epochs * ipe:
        return []
    fits = math.floor(epochs - steps / ipe)
    remedies = [f"{key} <= {fits}"] if fits >= 0 else []
    remedies.append(f"training.epochs >= {start + math.ceil(steps / ipe)}")
    return [
        f"{key} {start}: {what}, so they would not end within training.epochs {epochs}; set " + " or ".join(remedies)
    ]


def _too_short(epochs: int, steps: int, ipe: int, needed: int, what: str) -> str:
    enough = epochs
    while auto_latest_start(enough, ipe, needed) < 0:
        enough += 1
    finetune = max(1, math.ceil(FINETUNE_SHARE * epochs))
    interval = _interval_within((epochs - finetune) * ipe, steps)
    return (
        f"training.epochs {epochs}: {what}, and the pruned model needs {finetune} epoch(s) after them; set "
        f"training.epochs >= {enough}" + (f" or pruning.interval <= {interval}" if interval >= 1 else "")
    )


def _interval_within(iterations: int, steps: int) -> int:
    """The largest pruning.interval whose ``steps`` steps fit into ``iterations``."""
    return iterations // max(1, steps) - 1


def _watch_notes(policy: WatchingStartPolicy, latest: int | None, ipe: int, epochs: int) -> list[str]:
    """A policy that cannot fire before its latest start still prunes (at that start); say so."""
    if latest is None:
        return []
    cadence = policy.cadence
    schedule = cadence.count(epochs, ipe) or 0
    before = cadence.count(latest, ipe) or 0
    needed = policy.first_chance(schedule)
    if before >= needed:
        return []
    return [
        f"start: {policy.label} needs {needed} snapshots before it can fire, and this schedule takes {before} by its "
        f"latest start (epoch {latest}), so pruning will start there; snapshots more often "
        f"(start.snapshot_every, e.g. 0.25) or a longer schedule give it a chance"
    ]
