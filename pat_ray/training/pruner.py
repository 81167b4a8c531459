"""The pruning side of a PaT run: snapshots during dense training, then the pruning steps.

Holds the things that change when the model shrinks (the traced graph, the architecture
relative to the base model, the current FLOPs) so the engine's loop stays about training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pat_ray.core.architecture import Architecture
from pat_ray.core.contracts import SurgeryBackend
from pat_ray.core.cost.flops import Cost, graph_cost
from pat_ray.core.cost.latency import LatencyTable
from pat_ray.core.criterion import Criterion, Scores
from pat_ray.core.kinds import AttentionCut, Measure
from pat_ray.core.prune_step import pruned
from pat_ray.core.selection import Budget, budget_measure, check_reachable, select_architecture
from pat_ray.tracer.graph import Example, ModelGraph
from pat_ray.tracer.trace import trace_channel_groups
from pat_ray.training.collective import Collective


@dataclass(frozen=True)
class PruneStep:
    step: int
    fraction: float
    architecture: Architecture  # relative to the base model
    cost: Cost
    epoch: int = 0  # the epoch it happened in (0: at initialization)


class Pruner:
    """Selects snapshots and performs ``steps`` pruning steps ``interval`` iterations apart."""

    def __init__(
        self,
        model: nn.Module,
        example: Example,
        criterion: Criterion,
        surgery: SurgeryBackend,
        budget: Budget,
        steps: int,
        interval: int,
        exclude: list[str],
        collective: Collective,
        latency: LatencyTable | None = None,
        attention: AttentionCut = "heads",
    ) -> None:
        self.example, self.criterion, self.surgery = example, criterion, surgery
        self.budget, self.steps, self.interval, self.exclude = budget, steps, interval, exclude
        self.collective, self.latency, self.attention = collective, latency, attention
        self.graph = trace_channel_groups(model, example, exclude=exclude, attention=attention)
        self.dense_cost = graph_cost(self.graph)
        self.cost = self.dense_cost
        self.architecture = Architecture.full(
            {g.name: g.size for g in self.graph.prunable},
            {g.name: len({m.module for m in g.producers()}) for g in self.graph.prunable},  # layers, not slices
            attention,
        )
        self.reference = self._measure(self.graph, budget.measure)
        self.dense_seconds = self.seconds = self._measure(self.graph, "latency") if latency else None
        check_reachable(self.graph, budget, self.reference, latency)  # fail now, not after a dense epoch
        self.steps_done = 0
        self.active = False
        self.iters_since_step = 0

    @property
    def finished(self) -> bool:
        return self.steps_done >= self.steps

    def _measure(self, graph: ModelGraph, measure: Measure) -> float:
        return budget_measure(graph, measure, self.latency)({g.name: g.size for g in graph.groups})

    def scores(self, model: nn.Module) -> Scores:
        return self.collective.mean_scores(self.criterion.scores(model, self.graph))

    def snapshot(self, model: nn.Module) -> tuple[Architecture, Scores]:
        """The architecture the final budget would select now (base-model indices).

        Consumes the criterion's evidence: the next snapshot sees the next epoch's."""
        scores = self.scores(model)
        self.criterion.reset()
        selected = select_architecture(self.graph, scores, self.budget, self.reference, self.latency)
        self.collective.check_agreement(selected.fingerprint())
        return self.architecture.compose(selected), scores

    def observe(self, model: nn.Module) -> None:
        if self.criterion.needs_gradients and not self.finished:
            self.criterion.observe(model, self.graph)

    def start(self) -> None:
        self.active = True
        self.iters_since_step = 0

    def tick(self) -> bool:
        """Called after each training iteration: is the next pruning step due now (``interval``
        iterations trained since the last one, or since pruning started)?"""
        if not self.active or self.finished:
            return False
        self.iters_since_step += 1
        return self.iters_since_step >= self.interval

    def due_next(self) -> bool:
        """Whether the next ``tick`` will say a step is due."""
        return self.active and not self.finished and self.iters_since_step + 1 >= self.interval

    def step(
        self, model: nn.Module, optimizer: torch.optim.Optimizer | None, scores: Scores | None = None
    ) -> PruneStep:
        """Remove the next share of channels: step i of S keeps 1 - (1 - f) * i / S. A step
        that fails (surgery, or the smaller model's check) leaves the model, the optimizer and
        this pruner as they were."""
        fraction = 1.0 - (1.0 - self.budget.fraction) * (self.steps_done + 1) / self.steps
        scores = scores if scores is not None else self.scores(model)
        target = Budget(fraction, self.budget.measure, self.budget.round_to)
        selected = select_architecture(self.graph, scores, target, self.reference, self.latency)
        self.collective.check_agreement(selected.fingerprint())
        with pruned(model, self.graph, selected, self.surgery, self.example, optimizer):
            self._adopt(model, self.architecture.compose(selected))
        self.steps_done += 1
        self.criterion.reset()
        self.iters_since_step = 0
        if self.finished:
            self.active = False
        return PruneStep(self.steps_done, fraction, self.architecture, self.cost)

    def state(self) -> dict:
        return {"steps_done": self.steps_done, "active": self.active, "iters_since_step": self.iters_since_step}

    def restore(
        self, model: nn.Module, architecture: Architecture, state: dict, optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        """Shrink the freshly built dense ``model`` to a saved architecture and schedule position
        (``optimizer``: rewired to the smaller parameters, ready for its saved state)."""
        with pruned(model, self.graph, architecture, self.surgery, self.example, optimizer):
            self._adopt(model, architecture)
        self.steps_done, self.active = state["steps_done"], state["active"]
        self.iters_since_step = state["iters_since_step"]

    def _adopt(self, model: nn.Module, architecture: Architecture) -> None:
        """After surgery and its check: re-trace the smaller model and record the base-relative
        architecture (nothing is recorded unless all of it succeeds)."""
        graph = trace_channel_groups(model, self.example, exclude=self.exclude, attention=self.attention)
        seconds = self._measure(graph, "latency") if self.latency else self.seconds
        self.architecture, self.graph, self.cost, self.seconds = architecture, graph, graph_cost(graph), seconds

    @property
    def budget_kept(self) -> float:
        """The share of the budget's measure (of the dense model) the model keeps now."""
        return self._measure(self.graph, self.budget.measure) / self.reference

    @property
    def flops_kept(self) -> float:
        return self.cost.flops / self.dense_cost.flops

    @property
    def time_kept(self) -> float | None:
        """The training step's time over the dense model's, as the latency table predicts it."""
        if self.seconds is None or self.dense_seconds is None:
            return None
        return self.seconds / self.dense_seconds
