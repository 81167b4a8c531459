"""Timing shared by the benchmarks: medians after warm-up, GPU work synchronized."""

from __future__ import annotations

import statistics
import time

import torch


def timed(fn, device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def throughput(model, x, device, repeats: int, channels_last: bool) -> tuple[float, float]:
    """Images per second for a training step (forward, backward, SGD) and for inference.

    bf16 autocast on a GPU, fp32 on a CPU."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    targets = torch.zeros(len(x), dtype=torch.long, device=device)

    def train_step():
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer():
        with torch.no_grad(), autocast:
            model(x)

    model.train()
    train_s = timed(train_step, device, repeats)
    model.eval()
    infer_s = timed(infer, device, repeats)
    return len(x) / train_s, len(x) / infer_s


def saving_efficiency(time_ratio: float, flops_ratio: float) -> float:
    """Time saved over the saving the FLOPs imply: 1.0 when time follows FLOPs exactly."""
    return (1 - time_ratio) / (1 - flops_ratio)
