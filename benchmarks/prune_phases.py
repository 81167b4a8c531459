"""Where one-shot pruning's time goes: each phase of ``pat_ray.prune`` timed apart.

Per model (224 px, 50% of the FLOPs, magnitude scores): the trace (torch.fx, plus the run of
the graph on the example that records every shape), scores, selection, surgery, and the
post-surgery check (one forward of the pruned model). Both runs on the example compute their
products on meta tensors (``ShapesOnly``). The check is also timed a second time on the same
pruned model: the difference is what its *first* run pays for the pruned model's new layer
shapes (with real products, oneDNN built a kernel per new convolution shape there), and the
dense forward beside it is what one real forward of that size costs. Medians of --repeats fresh
models, each with its own weights (so its own pruned shapes), garbage collector paused. Writes benchmarks/results/prune_phases.md.

    python benchmarks/prune_phases.py
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from pathlib import Path

import torch

from _report import header
from _zoo import build
from pat_ray.core.selection import Budget, select_architecture
from pat_ray.core.verify import check_pruned
from pat_ray.plugins.registry import get_registry
from pat_ray.tracer.trace import trace_channel_groups

RESULTS = Path(__file__).parent / "results" / "prune_phases.md"
MODELS = ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "regnet_x_400mf", "densenet121"]
PHASES = ("trace", "scores", "select", "surgery", "check", "check again", "dense forward")


def phases(name: str, x: torch.Tensor, seed: int) -> dict[str, float]:
    """Seconds of each phase of one prune of a fresh ``name``, its weights drawn with ``seed``
    (each seed its own kept widths: the pruned shapes are new to the process)."""
    registry = get_registry()
    model = build(name).eval()
    torch.manual_seed(seed)
    for parameter in model.parameters():
        parameter.data.mul_(torch.rand_like(parameter) + 0.5)
    criterion, surgery = registry.create("criterion", "magnitude"), registry.create("surgery", "native")
    marks = [time.perf_counter()]
    with torch.no_grad():
        model(x)
    marks.append(time.perf_counter())
    graph = trace_channel_groups(model, x)
    marks.append(time.perf_counter())
    scores = criterion.scores(model, graph)
    marks.append(time.perf_counter())
    architecture = select_architecture(graph, scores, Budget(0.5))
    marks.append(time.perf_counter())
    surgery.apply(model, graph, architecture, None)
    marks.append(time.perf_counter())
    check_pruned(model, x, list(graph.output_shapes))
    marks.append(time.perf_counter())
    check_pruned(model, x, list(graph.output_shapes))
    marks.append(time.perf_counter())
    spans = [b - a for a, b in zip(marks, marks[1:])]
    return dict(zip(("dense forward", *PHASES[:-1]), spans))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    x = torch.randn(1, 3, 224, 224)
    rows = [
        "| model | " + " | ".join(f"{p} ms" for p in PHASES) + " | prune ms | new-shape cost of the check ms |",
        "|---|" + "---:|" * (len(PHASES) + 2),
    ]
    for name in args.models:
        phases(name, x, seed=0)  # warm-up: imports, first kernels of the dense shapes
        gc.disable()
        try:
            runs = [phases(name, x, seed) for seed in range(1, args.repeats + 1)]
        finally:
            gc.enable()
        median = {p: 1000 * statistics.median(r[p] for r in runs) for p in PHASES}
        total = sum(median[p] for p in PHASES[:5])
        cells = " | ".join(f"{median[p]:.1f}" for p in PHASES)
        rows.append(f"| {name} | {cells} | {total:.1f} | {median['check'] - median['check again']:.1f} |")
        print(rows[-1], flush=True)
    notes = (
        f"Input 1x3x224x224, 50% of the FLOPs, magnitude, median of {args.repeats} fresh models. "
        "prune = trace + scores + select + surgery + check (what `pat_ray.prune` runs); `check again` is the "
        "same check on the same pruned model, so `check` minus it is the first forward's cost for new layer shapes."
    )
    RESULTS.write_text("\n".join([*header("Where pruning's time goes", torch.device("cpu"), notes), *rows]) + "\n")


if __name__ == "__main__":
    main()
