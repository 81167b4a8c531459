"""FLOPs and parameter counts: from channel counts (for selection) and by measurement.

Convention (the pruning literature's): FLOPs are the multiply-accumulates of conv and
linear layers for one sample. ``cost_of`` evaluates the traced cost terms for any channel
counts without touching the model, so selection can try thousands of candidates;
``measure_cost`` runs the model with hooks and is the independent check.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pat_ray.core.custom_layers import rule_for
from pat_ray.core.graph import TRANSPOSED_CONV_TYPES, ComputeTerm, Example, ModelGraph, first_sample


@dataclass(frozen=True)
class Cost:
    flops: int
    params: int


def cost_of(terms: tuple[ComputeTerm, ...], counts: Mapping[str, int]) -> Cost:
    """Cost of the model whose group ``g`` keeps ``counts[g]`` channels."""
    flops = params = 0
    for t in terms:
        n_out = sum(counts[g] for g in t.out_groups) if t.out_groups else 1  # none: a fixed size
        n_in = sum(counts[g] for g in t.in_groups) * t.in_repeat if t.in_groups else 1
        pairs = n_out * n_in // t.in_divisor
        flops += t.macs_per_pair * pairs
        params += t.params_per_pair * pairs + t.params_per_out * n_out
    return Cost(flops, params)


def graph_cost(graph: ModelGraph) -> Cost:
    return cost_of(graph.terms, {g.name: g.size for g in graph.groups})


def measure_cost(model: nn.Module, example_input: Example) -> Cost:
    """Count conv/linear MACs with forward hooks and all parameters of the model."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        rule = rule_for(module)
        if rule is not None:  # declared by a plugin: MACs per channel pair (or per channel)
            macs = rule.macs(module, tuple(inputs[0].shape), tuple(output.shape)) if rule.macs else 0
            total += macs * (inputs[0].shape[1] * output.shape[1] if rule.maps == "produces" else output.shape[1])
            return
        assert isinstance(module.weight, torch.Tensor)
        if isinstance(module, TRANSPOSED_CONV_TYPES):  # every input pixel meets the whole (in, out/groups, k) weight
            total += module.weight.numel() * inputs[0][0, 0].numel()
            return
        fan_in = module.weight[0].numel()  # in_features, or in_channels/groups * kernel
        total += fan_in * output[0].numel()

    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, *TRANSPOSED_CONV_TYPES)
    layers = (m for m in model.modules() if isinstance(m, kinds) or rule_for(m) is not None)
    hooked_forward(model, example_input, {m: hook for m in layers})
    return Cost(total, sum(p.numel() for p in model.parameters()))


def hooked_forward(model: nn.Module, example_input: Example, hooks: Mapping[nn.Module, Callable[..., None]]) -> Any:
    """One eval-mode, no-grad forward of one example with ``hooks`` attached as forward hooks;
    the model's mode is restored and the hooks removed whatever happens. Returns the output."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(*first_sample(example_input))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
