"""Time to prune, native backend vs Torch-Pruning, on the torchvision model zoo.

For each model and FLOPs budget: pat_ray.prune (trace + magnitude scores + global
selection under the FLOPs budget + surgery) against Torch-Pruning's MetaPruner with
global magnitude importance. Torch-Pruning takes a channel ratio, not a FLOPs budget, so
its ratio is first found by bisection (untimed), then the timed run builds the pruner and
steps once, as a user would after choosing that ratio. Both tools are warmed up on each model
first, their timed runs alternate (so drift in the machine hits both alike) and run with the
garbage collector paused; timings are medians of --repeats runs in this process.
Writes benchmarks/results/surgery.md.

    python benchmarks/surgery.py                                  # nine zoo models at 70/50/30% FLOPs
    python benchmarks/surgery.py --models all --budgets 0.5 --repeats 3   # every torchvision CNN
    python benchmarks/surgery.py --models resnet50 --budgets 0.5   # one cell
"""

from __future__ import annotations

import argparse
import gc
import statistics
from pathlib import Path

import torch

import pat_ray
from _report import header as report_header
from _zoo import build, every_cnn, input_size
from pat_ray.core.cost.flops import measure_cost
from pat_ray.core.cost.timing import seconds_of

RESULTS = Path(__file__).parent / "results"  # surgery.md; surgery_all.md for --models all
ZOO = [
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "regnet_x_400mf",
    "densenet121",
    "vgg11_bn",
]


def runs(model: torch.nn.Module, x: torch.Tensor) -> str:
    """Whether the pruned model still computes: forward + backward with the right output shape."""
    try:
        out = model.train()(x.repeat(2, 1, 1, 1))
        out.sum().backward()
        return "yes" if out.shape == (2, 1000) else f"no: output {tuple(out.shape)}"
    except Exception as err:
        return f"no: {type(err).__name__}"


def fresh(name: str) -> torch.nn.Module:
    return build(name)


def timed(prune, model):
    """Seconds ``prune(model)`` takes, with the garbage collector paused."""
    gc.collect()
    gc.disable()
    try:
        return seconds_of(lambda: prune(model), torch.device("cpu")), model
    finally:
        gc.enable()


def run_native(name, x, budget):
    return timed(lambda model: pat_ray.prune(model, x, criterion="magnitude", budget=budget), fresh(name))


def run_torch_pruning(name, x, ratio):
    return timed(lambda model: torch_pruning_step(model, x, ratio), fresh(name))


def torch_pruning_step(model, x, ratio) -> None:
    import torch_pruning as tp

    ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000]
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=2),
        global_pruning=True,
        pruning_ratio=ratio,
        ignored_layers=ignored,
    )
    pruner.step()


def tp_ratio_for(name, x, budget, dense_flops) -> float:
    lo, hi = 0.0, 0.95
    for _ in range(8):  # ratio within 0.004: FLOPs within a few tenths of a percent
        mid = (lo + hi) / 2
        _, model = run_torch_pruning(name, x, mid)
        if measure_cost(model, x).flops > budget * dense_flops:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=ZOO)
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.7, 0.5, 0.3])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for name in every_cnn() if args.models == ["all"] else args.models:
        side = input_size(name) if args.models == ["all"] else args.size
        x = torch.randn(1, 3, side, side)
        dense = measure_cost(fresh(name), x)
        for budget in args.budgets:
            run_native(name, x, budget)  # warm-up: first-call costs (FX, allocator) are nobody's
            native_t, tp_t = [], []
            try:
                ratio = tp_ratio_for(name, x, budget, dense.flops)  # also TP's warm-up
                for _ in range(args.repeats):
                    native_t.append(run_native(name, x, budget))
                    tp_t.append(run_torch_pruning(name, x, ratio))
                tp_cost = measure_cost(tp_t[0][1], x)
                tp_time = statistics.median(t for t, _ in tp_t)
                tp_cells = (
                    f"{tp_time:.3f} | {tp_cost.flops / dense.flops:.3f} | {tp_cost.params / dense.params:.3f} "
                    f"| {runs(tp_t[0][1], x)}"
                )
            except Exception as err:  # report, do not hide: a failing model is a result too
                tp_time, tp_cells = float("nan"), f"failed: {type(err).__name__} | - | - | -"
                native_t = native_t or [run_native(name, x, budget) for _ in range(args.repeats)]
            native_cost = measure_cost(native_t[0][1], x)
            native_time = statistics.median(t for t, _ in native_t)
            rows.append(
                f"| {name} | {side} | {budget:.2f} | {native_time:.3f} | {native_cost.flops / dense.flops:.3f} "
                f"| {native_cost.params / dense.params:.3f} | {runs(native_t[0][1], x)} | {tp_cells} "
                f"| {tp_time / native_time:.2f} |"
            )
            print(rows[-1], flush=True)
            write_table(rows, args)  # after every cell: a long run leaves what it measured
    print(f"wrote {table_path(args)}")


def table_path(args: argparse.Namespace) -> Path:
    return RESULTS / ("surgery_all.md" if args.models == ["all"] else "surgery.md")


def write_table(rows: list[str], args: argparse.Namespace) -> None:
    import torch_pruning as tp

    header = [
        *report_header(
            "Surgery: native vs Torch-Pruning",
            torch.device("cpu"),
            f"torch-pruning {tp.__version__}; input 1x3xSxS (S: the px column), median of {args.repeats}. "
            "FLOPs/params columns are the fraction of the dense model kept.",
        ),
        "| model | px | FLOPs budget | native s | native FLOPs | native params | native runs | Torch-Pruning s | TP FLOPs "
        "| TP params | TP runs | TP time / native time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    path = table_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(header + rows) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    main()
