"""FLOPs and parameter counts: from channel counts (for selection) and by measurement.

Convention (the pruning literature's): FLOPs are the multiply-accumulates of conv and
linear layers for one sample, and of the products between activations (attention's).
``cost_of`` evaluates the traced cost terms for any channel counts without touching the
model, so selection can try thousands of candidates; ``measure_cost`` runs the model with
hooks and is the independent check.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pat_ray.core.cost.products import ProductCounter
from pat_ray.core.modes import in_mode
from pat_ray.tracer.graph import ComputeTerm, Example, ModelGraph, first_sample
from pat_ray.tracer.layers.table import family_of


@dataclass(frozen=True)
class Cost:
    flops: int
    params: int


def cost_of(terms: tuple[ComputeTerm, ...], counts: Mapping[str, int]) -> Cost:
    """Cost of the model whose group ``g`` keeps ``counts[g]`` channels."""
    flops = params = 0
    for t in terms:
        n_out, n_in = t.widths(counts)
        pairs = n_out * n_in // t.in_divisor
        flops += t.macs_per_pair * pairs
        params += t.params_per_pair * pairs + t.params_per_out * n_out
    return Cost(flops, params)


def graph_cost(graph: ModelGraph) -> Cost:
    return cost_of(graph.terms, {g.name: g.size for g in graph.groups})


def measure_cost(model: nn.Module, example_input: Example) -> Cost:
    """Count the MACs of every layer whose family counts them (convs, Linears, declared layers)
    with forward hooks, plus those of the products between tensors run outside such layers
    (attention's ``q @ k^T`` and ``attn @ v``), and all parameters of the model."""
    total = 0
    families = {module: family_of(module) for module in model.modules()}
    counted = {module: family for module, family in families.items() if family is not None and family.counts_macs}
    products = ProductCounter()

    def enter(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        products.inside += 1

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        products.inside -= 1
        total += counted[module].macs(module, inputs, output)

    entered = [module.register_forward_pre_hook(enter) for module in counted]
    try:
        with products:
            hooked_forward(model, example_input, {module: hook for module in counted})
    finally:
        for handle in entered:
            handle.remove()
    return Cost(total + products.macs, sum(p.numel() for p in model.parameters()))


def hooked_forward(model: nn.Module, example_input: Example, hooks: Mapping[nn.Module, Callable[..., None]]) -> Any:
    """One eval-mode, no-grad forward of one example with ``hooks`` attached as forward hooks;
    the model's mode is restored and the hooks removed whatever happens. Returns the output."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    try:
        with torch.no_grad(), in_mode(model, training=False):
            return model(*first_sample(example_input))
    finally:
        for handle in handles:
            handle.remove()
