"""Measure a model's ``LatencyTable`` on the device it is on.

Each conv / linear / norm that tracing found is rebuilt alone at a grid of channel counts
and timed for one forward + backward at the training batch size, in the run's layout and
autocast precision. Identical configurations (ResNets repeat their block shapes) are timed
once, which also means one configuration's error repeats in every layer that shares it: so
every configuration is timed in several rounds, in a new order each round, and keeps its
median. Timing layers alone and adding them up leaves out what runs between them (residual
adds, pooling, the optimizer step), so the table predicts the *share* of the step a
sub-network keeps better than the absolute seconds (BENCHMARKS.md, "Time per FLOP", compares
the prediction with the measured step; ``benchmarks/time_per_flop.py``).
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from pat_ray.core.cost.flops import hooked_forward
from pat_ray.core.cost.latency import LatencyTable, LayerTimes, monotone
from pat_ray.core.cost.product_timing import ProductTiming, TimedProduct
from pat_ray.core.cost.timing import device_name, seconds_of
from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.graph import INPUT_GROUP_PREFIX, AttentionCut, ComputeTerm, ModelGraph
from pat_ray.tracer.layers.family import LayerFamily
from pat_ray.tracer.layers.table import family_of
from pat_ray.tracer.trace import trace_channel_groups

Key = tuple[Hashable, ...]  # what identifies one timing (layer kind, hyper-parameters, widths)


def measure_latency(
    model: nn.Module,
    example_input: torch.Tensor,
    batch_size: int,
    *,
    round_to: int = 1,
    points: int = 6,
    repeats: int = 3,
    rounds: int = 3,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
    exclude: Iterable[str] = (),
    attention: AttentionCut = "heads",
    echo: Callable[[str], None] | None = None,
) -> LatencyTable:
    """Time every layer of ``model`` (on ``example_input``'s device) at ``points`` channel
    counts per axis, multiples of ``round_to`` between ``round_to`` and the layer's width:
    each configuration ``rounds`` times (the median of ``repeats`` steps after a warm-up),
    once per round, the rounds in shuffled orders; its time is the median over the rounds.

    ``channels_last`` and ``autocast_dtype`` should be the training run's: both change which
    kernels run. ``exclude`` as in ``trace_channel_groups`` (an excluded layer's width is
    timed at its full size only), and ``attention`` (the pruning's: the terms timed follow
    it). ``echo`` receives a line before and after the measurement.
    """
    if points < 2 or repeats < 1 or rounds < 1:
        raise ValueError(f"points must be >= 2, repeats and rounds >= 1; got {points}, {repeats}, {rounds}")
    device = example_input.device
    graph = trace_channel_groups(model, example_input, exclude=exclude, attention=attention)
    shapes = _input_shapes(model, example_input)
    timer = _LayerTimer(device, batch_size, repeats, channels_last, autocast_dtype)
    plans = [_plan(graph, t, model, shapes, round_to, points) for t in graph.terms if t.timed]
    jobs = {
        plan.key(n_in, n_out): (plan, *plan.widths(n_in, n_out))
        for plan in plans
        for n_in in plan.in_widths
        for n_out in plan.out_counts
    }
    if echo:
        echo(f"measuring layer latencies: {len(jobs)} layer configurations x {rounds} rounds on {device_name(device)}")
    started = time.perf_counter()
    # the timed layers' random weights and inputs must not shift the run's random stream
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        seconds = timer.in_rounds(jobs, rounds)
    layers = {
        plan.name: LayerTimes(
            plan.in_counts,
            plan.out_counts,
            monotone([[seconds[plan.key(n_in, n_out)] for n_out in plan.out_counts] for n_in in plan.in_widths]),
        )
        for plan in plans
    }
    if echo:
        echo(f"measured layer latencies in {time.perf_counter() - started:.1f} s")
    return LatencyTable(layers, batch_size, device.type, device_name(device))


def count_grid(full: int, step: int, points: int) -> tuple[int, ...]:
    """Up to ``points`` counts from ``step`` to ``full`` in multiples of ``step``, evenly
    spread, always including both ends (``(full,)`` when the layer is narrower than a step)."""
    legal = [*range(step, full, step), full] if full > step else [full]
    if len(legal) <= points:
        return tuple(legal)
    picks = {round(i * (len(legal) - 1) / (points - 1)) for i in range(points)}
    return tuple(legal[i] for i in sorted(picks))


def _plan(
    graph: ModelGraph, term: ComputeTerm, model: nn.Module, shapes: dict[str, Shapes], round_to: int, points: int
) -> _Plan:
    """A layer's plan, or a product's (attention's), which has no module of its own."""
    if term.product is not None:
        return _Plan.of(graph, term, TimedProduct(term.product), ((1, 1),), round_to, points, _PRODUCTS)
    name = term.module
    while name not in shapes and "." in name:  # run inside its parent (a MultiheadAttention's out_proj)
        name = name.rpartition(".")[0]
    return _Plan.of(graph, term, model.get_submodule(term.module), shapes[name], round_to, points)


_PRODUCTS = ProductTiming()


@dataclass(frozen=True)
class _Plan:
    """Which widths to time one layer at, and everything that identifies its configuration."""

    name: str
    module: nn.Module
    family: LayerFamily
    in_counts: tuple[int, ...]  # () when the input width is fixed or follows the output
    out_counts: tuple[int, ...]
    in_full: int
    spatial: tuple[int, ...]
    input_grad: bool  # False for a layer reading the model's input: training computes no grad there
    later_inputs: tuple[tuple[int, ...], ...]  # one sample's shape of each input after the first (fixed widths)
    channels_last: bool = False  # features on the input's last axis (a Linear per pixel, a LayerNorm)
    fold: int = 1  # inputs per sample (windows or patches folded into the batch dim)

    @classmethod
    def of(
        cls,
        graph: ModelGraph,
        term: ComputeTerm,
        module: nn.Module,
        shapes: Sequence[Sequence[int]],
        round_to: int,
        points: int,
        family: LayerFamily | None = None,
    ) -> _Plan:
        family = family or family_of(module)
        if family is None or not family.timed:
            raise UnsupportedModelError(
                f"a latency budget cannot time layer {term.module!r} ({type(module).__name__}): only convs, "
                "norms and Linears are timed; use measure: flops"
            )
        variable = {g.name for g in graph.prunable}
        if variable & set(term.factor_groups):
            raise UnsupportedModelError(
                f"a latency budget cannot time layer {term.module!r} ({type(module).__name__}): more than one of its "
                "inputs is prunable, and a latency table varies one input width; use measure: flops"
            )
        shape = shapes[0]
        size = {g.name: g.size for g in graph.groups}
        # a group channel fills ``repeat`` of the layer's (a head: head_dim), and round_to counts the layer's
        out_step = math.lcm(round_to // math.gcd(round_to, term.out_repeat), family.width_step(module))
        out_full = sum(size[g] for g in term.out_groups) * term.out_repeat
        out_counts: tuple[int, ...] = (out_full,)
        if variable & set(term.out_groups):  # conv (and norm) groups stay, each narrowed
            out_counts = tuple(c * term.out_repeat for c in count_grid(out_full // term.out_repeat, out_step, points))
        in_full = sum(size[g] for g in term.in_groups) * term.in_repeat
        in_counts: tuple[int, ...] = ()
        if not family.input_follows_output(module) and variable & set(term.in_groups):
            channels = count_grid(in_full // term.in_repeat, round_to, points)  # a grid: its points need not be legal
            in_counts = tuple(c * term.in_repeat for c in channels)
        input_grad = not term.in_groups or not all(g.startswith(INPUT_GROUP_PREFIX) for g in term.in_groups)
        last = family.reads_last_axis(module, tuple(shape))
        spatial = tuple(shape[1:-1]) if last else tuple(shape[2:])
        fold = int(shape[0]) if len(shape) > 1 else 1
        later = tuple(tuple(s[1:]) for s in shapes[1 : family.tensor_inputs])  # the rebuilt layer takes these
        return cls(term.module, module, family, in_counts, out_counts, in_full, spatial, input_grad, later, last, fold)

    @property
    def in_widths(self) -> tuple[int, ...]:
        return self.in_counts or (self.in_full,)

    def widths(self, n_in: int, n_out: int) -> tuple[int, int]:
        """The (input, output) widths the layer is built with: a layer whose input follows its
        output has as many inputs as outputs."""
        return (n_out if self.family.input_follows_output(self.module) else n_in), n_out

    def key(self, n_in: int, n_out: int) -> Key:
        """What identifies a timing: identical keys are timed once, whichever layer asks."""
        n_in, n_out = self.widths(n_in, n_out)
        layer = self.family.timing_key(self.module, n_in, n_out)
        return (*layer, self.spatial, self.channels_last, self.input_grad, self.fold)


Shapes = tuple[torch.Size, ...]  # of each tensor a module is called with


def _input_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, Shapes]:
    """The shapes of the tensors every module is called with in ``model(example[:1])``."""
    shapes: dict[str, Shapes] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: object) -> None:  # output kept
            shapes.setdefault(name, tuple(t.shape for t in inputs if isinstance(t, torch.Tensor)))

        return hook

    hooked_forward(model, example, {m: record(n) for n, m in model.named_modules() if n})
    return shapes


class _LayerTimer:
    """Builds a layer at given widths and times its forward + backward."""

    def __init__(
        self,
        device: torch.device,
        batch_size: int,
        repeats: int,
        channels_last: bool,
        autocast_dtype: torch.dtype | None,
    ) -> None:
        self.device, self.batch_size, self.repeats = device, batch_size, repeats
        self.channels_last = channels_last
        self.autocast_dtype = autocast_dtype

    def in_rounds(self, jobs: dict[Key, tuple[_Plan, int, int]], rounds: int) -> dict[Key, float]:
        """Each configuration's median time over ``rounds`` rounds, each round in a new order.

        A machine's speed drifts over seconds, and timing each configuration longer does not
        average a slow spell away: it lands on whichever layers were being timed. Shuffled
        rounds put a slow spell on different layers each round, and the median drops it
        (BENCHMARKS.md, "latency table spread", has the measurement)."""
        samples: dict[Key, list[float]] = {key: [] for key in jobs}
        order, shuffle = list(jobs), random.Random(0)
        for _ in range(rounds):
            shuffle.shuffle(order)
            for key in order:
                samples[key].append(self._time(*jobs[key]))
        return {key: statistics.median(times) for key, times in samples.items()}

    def _autocast(self) -> AbstractContextManager[object]:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _time(self, plan: _Plan, n_in: int, n_out: int) -> float:
        """The median of ``repeats`` forward + backward steps at ``plan.widths``, after a warm-up."""
        layer = plan.family.rebuilt(plan.module, n_in, n_out).to(self.device).train()
        at = (*plan.spatial, n_in) if plan.channels_last else (n_in, *plan.spatial)
        x = torch.randn(self.batch_size * plan.fold, *at, device=self.device)
        if self.channels_last and x.dim() == 4:
            layer, x = layer.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(plan.input_grad)
        later = [torch.randn(self.batch_size * plan.fold, *shape, device=self.device) for shape in plan.later_inputs]
        grads: list[torch.Tensor] = []  # the output's gradient, made once by the warm-up step

        def step() -> None:
            layer.zero_grad(set_to_none=True)
            x.grad = None
            with self._autocast():
                out = layer(x, *later)
            if not grads:
                grads.append(torch.ones_like(out))
            out.backward(grads[0])

        step()  # warm-up: allocations, kernel selection
        return statistics.median(seconds_of(step, self.device) for _ in range(self.repeats))
