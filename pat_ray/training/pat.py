"""``pat_ray.PaT``: pruning-aware training with the Early Pruning Indicator as a component of
any training loop, plain PyTorch, Ray Train's ``train_loop_per_worker`` or Lightning's.

The loop stays the user's: any model, loss, optimizer, scheduler, precision or task. The
component is told where the loop stands (``step`` after each optimizer step, ``end_epoch`` at
each epoch's end) and does the rest: architecture snapshots on the start policy's cadence, the
policy's decision (or its latest start), and the pruning steps, each one trace -> select ->
surgery -> check, with the optimizer's state sliced to the kept channels and a DDP wrapper
rebuilt around the smaller model. Under torch.distributed every rank agrees on the architecture
(scores averaged, fingerprints compared, rank 0's decision broadcast). ``pat_ray.run`` trains
through this same component.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pat_ray.config.plan import PlanError, PruningPlan, plan_for
from pat_ray.config.start import BaseStartPolicy, as_start_policy
from pat_ray.core.architecture import Architecture
from pat_ray.core.cost.latency import LatencyTable
from pat_ray.core.criterion import Criterion, Scores
from pat_ray.core.kinds import AttentionCut, Measure
from pat_ray.core.selection import Budget
from pat_ray.plugins.registry import get_registry
from pat_ray.tracer.graph import Example
from pat_ray.training.collective import Collective, LocalCollective
from pat_ray.training.pruner import Pruner, PruneStep
from pat_ray.training.records import StartedBy
from pat_ray.training.snapshots import SnapshotTracker


@dataclass(frozen=True)
class Snapshot:
    """One architecture snapshot: where (epochs into training), its EPI, the channels the budget
    would keep per group, and what it cost."""

    position: float
    epi: float | None
    counts: list[int]
    seconds: float


class PaT:
    """Pruning-aware training for your own loop::

        pat = pat_ray.PaT(model, example_input, optimizer, epochs=30, budget=0.5, start="epi")
        for epoch in range(30):
            for x, y in loader:
                ...; loss.backward(); optimizer.step()
                model = pat.step(model)   # snapshots on the policy's cadence; prunes when it fires
            model = pat.end_epoch(model)

    ``start``: a start policy's kind (``"epi"``, ``"early_bird"``, ``"never"``...), a mapping such
    as ``{"kind": "fixed", "epoch": 2}``, or a policy object; its fields are the config's
    ``start`` section. ``epochs`` is the schedule's length (the latest start and EPI's scaled
    window are drawn from it); ``iterations_per_epoch`` defaults to the calls to ``step`` in the
    first epoch. ``criterion``, ``budget``, ``measure``, ``round_to``, ``exclude``, ``attention``,
    ``backend`` and ``latency`` are ``pat_ray.prune``'s; ``steps`` pruning steps fall
    ``interval`` iterations apart. ``on_prune(step)`` is told of each pruning step.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: Example,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        epochs: int,
        budget: float = 0.5,
        measure: Measure = "flops",
        start: str | Mapping[str, Any] | BaseStartPolicy = "epi",
        criterion: str | Criterion = "magnitude",
        criterion_params: Mapping[str, Any] | None = None,
        steps: int = 3,
        interval: int = 10,
        round_to: int = 1,
        exclude: Iterable[str] = (),
        attention: AttentionCut = "heads",
        backend: str = "native",
        iterations_per_epoch: int | None = None,
        latency: LatencyTable | None = None,
        on_prune: Callable[[PruneStep], None] | None = None,
        collective: Collective | None = None,
    ) -> None:
        registry = get_registry()
        if isinstance(criterion, str):
            criterion = registry.create("criterion", criterion, **dict(criterion_params or {}))
        self.policy = as_start_policy(start)
        self.epochs, self.optimizer, self.on_prune = epochs, optimizer, on_prune
        self.collective = collective or default_collective(example_input)
        self.model = model
        self.pruner = Pruner(
            unwrapped(model),
            example_input,
            criterion=criterion,
            surgery=registry.create("surgery", backend),
            budget=Budget(budget, measure, round_to),
            steps=steps,
            interval=interval,
            exclude=list(exclude),
            collective=self.collective,
            latency=latency,
            attention=attention,
        )
        self.similarity = registry.create("similarity", self.policy.similarity_metric)
        self.epoch = 0  # finished epochs
        self.iteration = 0  # optimizer steps so far
        self.step_in_epoch = 0
        self.iterations_per_epoch = iterations_per_epoch
        self.trigger_epoch: int | None = None  # the epoch pruning started in (0: at initialization)
        self.trigger_position: float | None = None  # where exactly, in epochs
        self.started_by: StartedBy | None = None
        self.snapshots: list[Snapshot] = []
        self.tracker: SnapshotTracker | None = None
        self.plan: PruningPlan | None = None
        self.begun = False
        if iterations_per_epoch is not None:
            self._plan(iterations_per_epoch)

    # --- what the loop calls ---------------------------------------------------------------

    def begin(self, model: nn.Module) -> nn.Module:
        """Before the first iteration (``step`` calls it if the loop does not): a policy that
        starts at 0 (``{"kind": "fixed", "epoch": 0}``, or a latest start of 0) prunes here, so
        the whole run trains the small model. A resumed component has begun already."""
        self.model = model
        if not self.begun:
            self.begun = True
            if self.iterations_per_epoch is not None:
                self._decide(0.0, None)
        return self.model

    def step(self, model: nn.Module) -> nn.Module:
        """After each optimizer step: the criterion sees the gradients, a pruning step falls due
        or a mid-epoch snapshot is taken. Returns the model to train from now on (the same
        object unless a DDP wrapper had to be rebuilt around a pruned model)."""
        self.model = model if self.begun else self.begin(model)
        self.iteration += 1
        self.step_in_epoch += 1
        self.pruner.observe(unwrapped(self.model))
        if self.pruner.tick():
            self._prune_step()
        elif self._mid_epoch_snapshot_due(self.step_in_epoch, self.iteration):
            self._snapshot_and_decide(self.epoch + self.step_in_epoch / cast(int, self.iterations_per_epoch))
        return self.model

    def end_epoch(self, model: nn.Module) -> nn.Module:
        """At each epoch's end (after evaluation, if the loop evaluates): the epoch's last
        snapshot and the policy's decision. Returns the model to train from now on."""
        self.model = model if self.begun else self.begin(model)
        if self.iterations_per_epoch is None:
            self._plan(max(1, self.step_in_epoch))
        ipe = cast(int, self.iterations_per_epoch)
        self.epoch += 1
        self.step_in_epoch = 0
        if self.trigger_epoch is None and self.epoch <= self.epochs:
            if self.policy.cadence.due(ipe, self.iteration, ipe):
                self._snapshot_and_decide(float(self.epoch))
            else:
                self._decide(float(self.epoch), None)  # a fixed start falls on an epoch's end
        return self.model

    def will_act(self) -> bool:
        """Whether the next ``step`` takes a snapshot or a pruning step (a loop may check that
        its loss is finite first: scores of a diverged model mean nothing)."""
        return self.pruner.due_next() or self._mid_epoch_snapshot_due(self.step_in_epoch + 1, self.iteration + 1)

    # --- what it knows ---------------------------------------------------------------------

    @property
    def pruning(self) -> bool:
        """Pruning has started and steps remain."""
        return self.pruner.active

    @property
    def pruned(self) -> bool:
        """Every pruning step is done: the model is at its budget."""
        return self.pruner.finished

    @property
    def architecture(self) -> Architecture:
        """The channels kept per group, relative to the model as it was given."""
        return self.pruner.architecture

    @property
    def history(self) -> list[Snapshot]:
        return list(self.snapshots)

    @property
    def flops_kept(self) -> float:
        return self.pruner.flops_kept

    @property
    def budget_kept(self) -> float:
        return self.pruner.budget_kept

    # --- resuming --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain data and tensors (``torch.save`` / ``weights_only`` loading): what
        ``load_state_dict`` needs to continue on a freshly built model."""
        return {
            "architecture": self.pruner.architecture.to_dict(),
            "pruner": self.pruner.state(),
            "tracker": self.tracker.state() if self.tracker else None,
            "snapshots": [asdict(s) for s in self.snapshots],
            "epoch": self.epoch,
            "iteration": self.iteration,
            "step_in_epoch": self.step_in_epoch,
            "iterations_per_epoch": self.iterations_per_epoch,
            "trigger_epoch": self.trigger_epoch,
            "trigger_position": self.trigger_position,
            "started_by": self.started_by,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> nn.Module:
        """Shrink the model given to ``__init__`` (freshly built, dense) to the saved
        architecture and continue where ``state`` left off; load the model's and optimizer's own
        state dicts after this. Returns the model (re-wrapped if it was wrapped)."""
        architecture = Architecture.from_dict(state["architecture"])
        self.pruner.restore(unwrapped(self.model), architecture, state["pruner"], self.optimizer)
        self.epoch, self.iteration, self.step_in_epoch = state["epoch"], state["iteration"], state["step_in_epoch"]
        self.trigger_epoch, self.trigger_position = state["trigger_epoch"], state["trigger_position"]
        self.started_by = state["started_by"]
        self.begun = True
        self.snapshots = [Snapshot(**s) for s in state["snapshots"]]
        if state["iterations_per_epoch"] is not None:
            self._plan(state["iterations_per_epoch"])
        if state["tracker"] is not None:
            self._tracker().load(state["tracker"])
        self.model = rewrapped(self.model)
        return self.model

    # --- inside -----------------------------------------------------------------------------

    def _plan(self, iterations_per_epoch: int) -> None:
        """The latest start and the check that the pruning steps fit, once an epoch's length is known."""
        self.iterations_per_epoch = iterations_per_epoch
        self.plan = plan_for(self.policy, self.epochs, self.pruner.steps, self.pruner.interval, iterations_per_epoch)
        if self.plan.problems:
            raise PlanError(self.plan.problems)

    def _tracker(self) -> SnapshotTracker:
        if self.tracker is None:
            snapshots = self.policy.cadence.count(self.epochs, self.iterations_per_epoch) or 0
            self.tracker = SnapshotTracker(self.similarity, self.policy.snapshot_window(snapshots), snapshots)
        return self.tracker

    def _mid_epoch_snapshot_due(self, step: int, iteration: int) -> bool:
        """A snapshot inside an epoch (the one at its end waits for ``end_epoch``): until pruning
        starts, at the policy's cadence, within the schedule, once an epoch's length is known."""
        ipe = self.iterations_per_epoch
        if self.trigger_epoch is not None or ipe is None or step >= ipe or self.epoch >= self.epochs:
            return False
        return self.policy.cadence.due(step, iteration, ipe)

    def _snapshot_and_decide(self, position: float) -> None:
        started = time.perf_counter()
        snapshot, scores = self.pruner.snapshot(unwrapped(self.model))
        epi = self._tracker().record(snapshot)
        self.snapshots.append(Snapshot(position, epi, list(snapshot.counts), time.perf_counter() - started))
        self._decide(position, scores)

    def _decide(self, position: float, scores: Scores | None) -> None:
        """The start policy decides; past its latest start pruning starts whatever it says, so the
        pruning steps end inside the schedule and the model reaches its budget."""
        fires = self.policy.decide(position, self.epochs, self._tracker())
        latest = self.plan.latest_start if self.plan else None
        late = not fires and latest is not None and position >= latest
        if not self.collective.broadcast_decision(fires or late):
            return
        self.trigger_epoch, self.trigger_position = math.ceil(position), position
        self.started_by = "latest_start" if late else "policy"
        self.pruner.start()
        if scores is not None or not self.pruner.criterion.needs_gradients:
            self._prune_step(scores)

    def _prune_step(self, scores: Scores | None = None) -> None:
        model = unwrapped(self.model)
        step = self.pruner.step(model, self.optimizer, scores)
        step = replace(step, epoch=self.epoch + (self.step_in_epoch > 0))  # the epoch it happened in
        self.model = rewrapped(self.model)
        if self.on_prune is not None:
            self.on_prune(step)


def unwrapped(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def rewrapped(model: nn.Module) -> nn.Module:
    """A DDP wrapper holds the old parameters in its buckets: after surgery it is built again
    around the same module, with the same settings; any other model is returned as it is."""
    if not isinstance(model, DistributedDataParallel):
        return model
    return DistributedDataParallel(
        model.module,
        device_ids=model.device_ids,
        output_device=model.output_device,
        **_buffer_sync(model),
        process_group=model.process_group,
        find_unused_parameters=model.find_unused_parameters,
        gradient_as_bucket_view=model.gradient_as_bucket_view,
        static_graph=model.static_graph,
    )


def _buffer_sync(model: DistributedDataParallel) -> dict[str, Any]:
    """The wrapper's buffer syncing, said the way this torch takes it without a warning: torch
    2.14 deprecates ``broadcast_buffers`` (syncing is its default); ``False`` is still passed as
    ``broadcast_buffers``, the one spelling that also skips the sync at construction."""
    syncs = getattr(model, "forward_sync_buffers", None)
    if syncs is None:  # an older torch
        return {"broadcast_buffers": model.broadcast_buffers}
    return {} if syncs else {"broadcast_buffers": False}


def default_collective(example: Example) -> Collective:
    """Agreement between the ranks of a torch.distributed job (Ray Train, torchrun, Lightning's
    DDP), else nothing to agree on."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from pat_ray.training.torch_collective import DistributedCollective

        first = example[0] if isinstance(example, tuple) else example
        return DistributedCollective(first.device)
    return LocalCollective()
