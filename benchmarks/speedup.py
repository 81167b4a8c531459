"""Real speedup of physically pruned models: throughput against the FLOPs ratio.

For each model and FLOPs fraction, prune a fresh model with pat_ray (magnitude, global
selection, native surgery) and time a training step (forward + backward + SGD step) and
inference (eval, no grad) against the dense model in the same process, median of --repeats
after warm-up. On a GPU (when one is present): channels_last and bf16 autocast; else CPU.
The efficiency column is speedup / (1 / FLOPs ratio): 1.0 means time follows FLOPs exactly.

    python benchmarks/speedup.py
"""

from __future__ import annotations

import argparse

import torch
import torchvision

import pat_ray
from _report import header, write
from _timing import throughput


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
        dense_train, dense_infer = throughput(fresh(name), x, device, args.repeats, channels_last)
        rows.append(f"| {name} | 1.000 | {dense_train:.1f} | 1.00 | {dense_infer:.1f} | 1.00 | - |")
        print(rows[-1], flush=True)
        for fraction in args.fractions:
            model = fresh(name)
            pat_ray.prune(model, example, criterion="magnitude", budget=fraction)
            ratio = pat_ray.measure_cost(model, example).flops / dense_flops
            train, infer = throughput(model, x, device, args.repeats, channels_last)
            ideal = 1 / ratio
            rows.append(
                f"| {name} | {ratio:.3f} | {train:.1f} | {train / dense_train:.2f} | {infer:.1f} "
                f"| {infer / dense_infer:.2f} | {train / dense_train / ideal:.2f} / {infer / dense_infer / ideal:.2f} |"
            )
            print(rows[-1], flush=True)
    precision = "bf16 autocast, channels_last" if device.type == "cuda" else "fp32"
    lines = header(
        "Real speedup of pruned models",
        device,
        f"Batch {batch} x 3 x {size} x {size}, {precision}, median of {args.repeats} after 2 warm-up steps; "
        "speedups are against the dense model measured in the same process.",
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
