"""Real speedup of physically pruned models: throughput against the FLOPs ratio.

For each model and FLOPs fraction, prune a fresh model with pat_ray (magnitude, global
selection, native surgery) and time a training step (forward + backward + SGD step) and
inference (eval, no grad) against the dense model in the same process: throughput is the median
of --repeats after warm-up, the speedup the median ratio of the two models timed in alternation
(``_timing.alternated_ratio``). On a GPU (when one is present): channels_last and bf16 autocast; else CPU.
The efficiency column is speedup / (1 / FLOPs ratio): 1.0 means time follows FLOPs exactly.

    python benchmarks/speedup.py
"""

from __future__ import annotations

import argparse

import torch
import torchvision

import pat_ray
from _report import header, write
from _timing import alternated_ratio, inference, throughput, train_step


def fresh(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50", "mobilenet_v2"])
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.7, 0.5, 0.3])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=None, help="default: 64 on GPU, 16 on CPU")
    parser.add_argument("--size", type=int, default=None, help="default: 224 on GPU, 128 on CPU")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = args.batch or (64 if device.type == "cuda" else 16)
    size = args.size or (224 if device.type == "cuda" else 128)
    x = torch.randn(batch, 3, size, size, device=device)
    channels_last = device.type == "cuda"
    example = torch.randn(1, 3, size, size)
    rows = []
    for name in args.models:
        dense_flops = pat_ray.measure_cost(fresh(name), example).flops
        dense = fresh(name)
        dense_train, dense_infer = throughput(dense, x, device, args.repeats, channels_last)
        rows.append(f"| {name} | 1.000 | {dense_train:.1f} | 1.00 | {dense_infer:.1f} | 1.00 | - |")
        print(rows[-1], flush=True)
        for fraction in args.fractions:
            model = fresh(name)
            pat_ray.prune(model, example, criterion="magnitude", budget=fraction)
            ratio = pat_ray.measure_cost(model, example).flops / dense_flops
            train, infer = throughput(model, x, device, args.repeats, channels_last)
            # speedups from the two models timed in alternation, not from the throughputs above
            train_speedup = alternated_ratio(
                train_step(dense, x, device, channels_last), train_step(model, x, device, channels_last), device
            )
            infer_speedup = alternated_ratio(
                inference(dense, x, device, channels_last), inference(model, x, device, channels_last), device
            )
            rows.append(
                f"| {name} | {ratio:.3f} | {train:.1f} | {train_speedup:.2f} | {infer:.1f} "
                f"| {infer_speedup:.2f} | {train_speedup * ratio:.2f} / {infer_speedup * ratio:.2f} |"
            )
            print(rows[-1], flush=True)
    precision = "bf16 autocast, channels_last" if device.type == "cuda" else "fp32"
    lines = header(
        "Real speedup of pruned models",
        device,
        f"Batch {batch} x 3 x {size} x {size}, {precision}, img/s: median of {args.repeats} after 2 warm-up steps; "
        "speedups: dense time over pruned time, the two timed in alternation, median of 9 per-round ratios.",
    )
    lines += [
        "| model | FLOPs ratio | train img/s | train speedup | inference img/s | inference speedup "
        "| efficiency train / inference |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]
    write(f"speedup_{device.type}.md", lines)


if __name__ == "__main__":
    main()
