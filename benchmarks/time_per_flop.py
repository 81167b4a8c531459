"""Where a training step's time goes, stage by stage, against where its FLOPs are.

A FLOPs budget assumes every FLOP costs the same time. This measures how far that holds on
this machine: each conv and BatchNorm of the model is timed alone (a copy of the layer,
forward + backward on a random input of the shape it sees in the model, channels_last,
median of --repeats after warm-up), and the times and FLOPs are summed per stage (the
model's top-level child: stem, layer1, ...). "time / FLOPs" is the stage's share of the
measured time over its share of the FLOPs: above 1, a FLOP there costs more than average, so
pruning there saves more time than its FLOPs say, and below 1, less.

A second table prunes each model once (magnitude at init, 50% of the FLOPs) with kept channel
counts rounded to 16, 8 and 1, and times a whole training step against the dense model's.

A third asks how much better any allocation of the same FLOPs could do: the magnitude scores of
each stage are scaled by 1/4, 1 or 4 (every combination), so the global selection moves the
cuts between stages, and each distinct architecture at 50% FLOPs (round_to 16) is timed. Its
best efficiency is what a FLOPs budget can reach on this machine with a smarter ranking.

A fourth checks the cost model of a budget in step time: the model's latency table (each
layer timed alone at a grid of widths, ``pat_ray.measure_latency``) predicts the step time a
sub-network keeps; each model is pruned (magnitude at init, round_to 16) to several time
budgets, down to its smallest legal sub-network, and the prediction is set against its
measured training step.

    python benchmarks/time_per_flop.py
"""

from __future__ import annotations

import argparse
import copy
import itertools
from collections import defaultdict

import torch
from torch import nn

import pat_ray
from _report import header, write
from _timing import saving_efficiency, step_time_ratio, timed
from pat_ray.core.selection import Budget, budget_measure, select_architecture, smallest_counts
from pat_ray.plugins.registry import get_registry
from pat_ray.tracer.trace import trace_channel_groups

SETTINGS = [("cifar_resnet56", 32), ("resnet18", 64), ("resnet18", 128)]
CPU = torch.device("cpu")


def layer_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[nn.Module, torch.Size]]:
    """Each conv / BatchNorm / linear layer with the input shape it sees in ``model(x)``."""
    seen = {}

    def record(name: str):
        def hook(module: nn.Module, inputs, _output) -> None:  # None: the output stays as it is
            seen.setdefault(name, (module, inputs[0].shape))

        return hook

    hooks = [
        module.register_forward_hook(record(name))
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))
    ]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return seen


def layer_seconds(module: nn.Module, shape: torch.Size, repeats: int) -> float:
    layer = copy.deepcopy(module).train()
    x = torch.randn(shape)
    if x.dim() == 4:
        layer, x = layer.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)

    def step():
        out = layer(x)
        out.backward(torch.ones_like(out))

    return timed(step, CPU, repeats)


def build(model_name: str) -> nn.Module:
    torch.manual_seed(0)
    params = {"in_channels": 3} if model_name.startswith("cifar_") else {}
    return get_registry().create("model", model_name, num_classes=10, **params)


def rounding_rows(model_name: str, size: int, batch: int) -> list[str]:
    """Training step of the model pruned to half its FLOPs, per rounding of the kept counts."""
    x, example = torch.randn(batch, 3, size, size), torch.zeros(1, 3, size, size)
    dense = build(model_name)
    dense_flops = pat_ray.measure_cost(build(model_name), example).flops
    rows = []
    for round_to in (16, 8, 1):
        model = build(model_name)
        pat_ray.prune(model, example, budget=0.5, round_to=round_to)
        kept = pat_ray.measure_cost(model, example).flops / dense_flops
        step_ratio = step_time_ratio(model, dense, x, CPU, channels_last=True)
        rows.append(
            f"| {model_name} | {size} | {round_to} | {kept:.3f} | {step_ratio:.3f} "
            f"| {saving_efficiency(step_ratio, kept):.2f} |"
        )
    return rows


def allocation_rows(model_name: str, size: int, batch: int, factors=(0.25, 1.0, 4.0)) -> list[str]:
    """Every distinct 50%-FLOPs architecture that per-stage score weights lead the selection to."""
    x, example = torch.randn(batch, 3, size, size), torch.zeros(1, 3, size, size)
    dense = build(model_name)
    dense_flops = pat_ray.measure_cost(dense, example).flops
    registry = get_registry()
    magnitude, surgery = registry.create("criterion", "magnitude"), registry.create("surgery", "native")
    stages = sorted({name.split(".")[0] for name, _ in dense.named_children() if name.startswith("layer")})
    timed_widths, rows = set(), []
    for weights in itertools.product(factors, repeat=len(stages)):
        model = build(model_name)
        graph = trace_channel_groups(model, example)
        scale = dict(zip(stages, weights))
        scores = {name: s * scale.get(name.split(".")[0], 1.0) for name, s in magnitude.scores(model, graph).items()}
        surgery.apply(model, graph, select_architecture(graph, scores, Budget(0.5, "flops", round_to=16)), None)
        widths = tuple(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))
        if widths in timed_widths:
            continue
        timed_widths.add(widths)
        kept = pat_ray.measure_cost(model, example).flops / dense_flops
        step_ratio = step_time_ratio(model, dense, x, CPU, channels_last=True)
        per_stage = " / ".join(
            str(
                sum(
                    m.out_channels
                    for n, m in model.named_modules()
                    if n.startswith(f"{stage}.") and isinstance(m, nn.Conv2d)
                )
            )
            for stage in stages
        )
        rows.append((saving_efficiency(step_ratio, kept), kept, step_ratio, per_stage, weights))
        print(model_name, size, weights, f"efficiency {rows[-1][0]:.2f}", flush=True)
    best = max(rows)
    return [
        f"| {model_name} | {size} | {len(rows)} | {min(rows)[0]:.2f} | {best[0]:.2f} | {best[1]:.3f} | {best[2]:.3f} "
        f"| {best[3]} | {' / '.join(f'{w:g}' for w in best[4])} |"
    ]


def latency_rows(model_name: str, size: int, batch: int, fractions=(0.8, 0.65, 0.5)) -> list[str]:
    """Predicted against measured step time kept, per time budget and at the smallest legal sub-network."""
    x, example = torch.randn(batch, 3, size, size), torch.zeros(1, 3, size, size)
    dense = build(model_name)
    graph = trace_channel_groups(dense, example)
    table = pat_ray.measure_latency(build(model_name), example, batch, round_to=16, channels_last=True)
    seconds = budget_measure(graph, "latency", table)
    full = {g.name: g.size for g in graph.groups}
    floor = seconds(smallest_counts(graph, round_to=16)) / seconds(full)
    dense_flops = pat_ray.measure_cost(dense, example).flops
    rows = []
    for fraction in sorted({f for f in fractions if f > floor} | {floor}, reverse=True):
        model = build(model_name)
        pat_ray.prune(
            model, example, budget=min(1.0, fraction * (1 + 1e-9)), measure="latency", round_to=16, latency=table
        )
        pruned = trace_channel_groups(model, example)
        predicted = table.predict(pruned.terms, {g.name: g.size for g in pruned.groups}) / seconds(full)
        measured = step_time_ratio(model, dense, x, CPU, channels_last=True)
        kept = pat_ray.measure_cost(model, example).flops / dense_flops
        label = f"{fraction:.2f}" if fraction > floor else f"smallest legal ({floor:.3f})"
        rows.append(
            f"| {model_name} | {size} | {label} | {predicted:.3f} | {measured:.3f} | {measured - predicted:+.3f} "
            f"| {kept:.3f} | {saving_efficiency(measured, kept):.2f} |"
        )
        print(rows[-1], flush=True)
    return rows


def stage_table(model_name: str, size: int, batch: int, repeats: int) -> list[str]:
    model = build(model_name)
    seconds, macs = defaultdict(float), defaultdict(int)
    for name, (module, shape) in layer_inputs(model, torch.randn(batch, 3, size, size)).items():
        stage = name.split(".")[0] if name.startswith("layer") else "stem / head"
        seconds[stage] += layer_seconds(module, shape, repeats)
        macs[stage] += pat_ray.measure_cost(module, torch.zeros(shape)).flops  # 0 for a BatchNorm
    total_s, total_macs = sum(seconds.values()), sum(macs.values())
    rows = []
    for stage in sorted(seconds, key=lambda s: (not s.startswith("layer"), s)):
        time_share, flops_share = seconds[stage] / total_s, macs[stage] / total_macs
        rows.append(
            f"| {model_name} | {size} | {stage} | {flops_share:.3f} | {time_share:.3f} "
            f"| {time_share / flops_share:.2f} | {seconds[stage] * 1e3:.1f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows, rounding, allocation, latency = [], [], [], []
    for model_name, size in SETTINGS:
        rows += stage_table(model_name, size, args.batch, args.repeats)
        rounding += rounding_rows(model_name, size, args.batch)
        latency += latency_rows(model_name, size, args.batch)
        print("\n".join(rows[-5:] + rounding[-3:]), flush=True)
    for model_name, size in SETTINGS[:2]:
        allocation += allocation_rows(model_name, size, args.batch)
    lines = header(
        "Time per FLOP, stage by stage",
        CPU,
        f"Batch {args.batch}, fp32, channels_last; each conv / BatchNorm / linear timed alone (forward + backward), "
        f"median of {args.repeats}; summed per stage. time / FLOPs = the stage's time share over its FLOPs share.",
    )
    lines += [
        "| model | input px | stage | FLOPs share | time share | time / FLOPs | stage ms |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Pruned once to 50% of the FLOPs (magnitude at init), kept channels rounded to `round_to`; a whole training "
        "step (forward, backward, SGD) against the dense model's, same batch:",
        "",
        "| model | input px | round_to | FLOPs kept | step time x dense | efficiency |",
        "|---|---|---|---|---|---|",
        *rounding,
        "",
        "The same 50% of the FLOPs (round_to 16) allocated differently: each stage's scores weighted 1/4, 1 or 4 "
        "in every combination; each distinct architecture timed (training step, alternated with the dense model's):",
        "",
        "| model | input px | architectures | worst efficiency | best efficiency | its FLOPs kept "
        "| its step time x dense | its conv output channels per stage | its stage weights |",
        "|---|---|---|---|---|---|---|---|---|",
        *allocation,
        "",
        "Pruned to a budget in step time (magnitude at init, round_to 16): the step time kept as the model's latency "
        "table predicts it (each layer timed alone, 6 widths per axis) against the measured training step "
        "(alternated with the dense model's), and the FLOPs that cut kept:",
        "",
        "| model | input px | time budget | predicted time kept | measured time kept | measured - predicted "
        "| FLOPs kept | efficiency |",
        "|---|---|---|---|---|---|---|---|",
        *latency,
    ]
    write("time_per_flop.md", lines)


if __name__ == "__main__":
    main()
