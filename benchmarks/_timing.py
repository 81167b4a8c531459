"""Timing shared by the benchmarks: medians after warm-up, GPU work synchronized, no denormals."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from pat_ray.core.cost.timing import seconds_of


@contextmanager
def _denormals_flushed() -> Iterator[None]:
    """Flush denormal floats to zero while timing on a CPU.

    A timed training step repeats on one batch, so its loss falls towards 0 and its gradients
    pass through the denormal range, where x86 arithmetic is far slower (BENCHMARKS.md,
    "Denormals", has the measurement). Real training rarely gets there; a benchmark loop
    always does. (torch has no getter for the setting: it is restored to torch's default, off.)"""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def timed(fn, device, repeats: int, warmup: int = 2) -> float:
    with _denormals_flushed():
        for _ in range(warmup):
            fn()
        return statistics.median(seconds_of(fn, device) for _ in range(repeats))


def _autocast(device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _prepare(model, x, device, channels_last: bool):
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x


def train_step(model, x, device, channels_last: bool) -> Callable[[], None]:
    """One training step (forward, backward, SGD with momentum) on ``x``, ready to be timed.

    bf16 autocast on a GPU, fp32 on a CPU."""
    model, x = _prepare(model, x, device, channels_last)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    # random labels, not one class: a single-class loss collapses within a few steps
    targets = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(0)).to(device)

    def step() -> None:
        with _autocast(device):
            loss = torch.nn.functional.cross_entropy(model(x), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def inference(model, x, device, channels_last: bool) -> Callable[[], None]:
    """One eval-mode forward pass on ``x`` without gradients, ready to be timed."""
    model, x = _prepare(model, x, device, channels_last)
    model.eval()

    def forward() -> None:
        with torch.no_grad(), _autocast(device):
            model(x)

    return forward


def throughput(model, x, device, repeats: int, channels_last: bool) -> tuple[float, float]:
    """Images per second for a training step and for inference."""
    train_s = timed(train_step(model, x, device, channels_last), device, repeats)
    infer_s = timed(inference(model, x, device, channels_last), device, repeats)
    return len(x) / train_s, len(x) / infer_s


def alternated_ratio(fn, baseline_fn, device, rounds: int = 9, warmup: int = 2) -> float:
    """Time of ``fn`` over ``baseline_fn``'s, the two run in alternation: the median of the
    per-round ratios.

    Alternating call by call cancels the slow drifts of a shared machine, which timing one
    function's repeats and then the other's does not: on the 2-core development VM such
    sequential medians moved the same model's step-time ratio by up to 0.3 from run to run;
    alternated, the median stays within ~0.02."""
    with _denormals_flushed():
        for _ in range(warmup):
            fn(), baseline_fn()
        ratios = []
        for _ in range(rounds):
            base_s = seconds_of(baseline_fn, device)
            ratios.append(seconds_of(fn, device) / base_s)
    return statistics.median(ratios)


def step_time_ratio(model, baseline, x, device, channels_last: bool, rounds: int = 9) -> float:
    """Training-step time of ``model`` over ``baseline``'s, alternated (``alternated_ratio``)."""
    return alternated_ratio(
        train_step(model, x, device, channels_last), train_step(baseline, x, device, channels_last), device, rounds
    )


def saving_efficiency(time_ratio: float, flops_ratio: float) -> float:
    """Time saved over the saving the FLOPs imply: 1.0 when time follows FLOPs exactly."""
    return (1 - time_ratio) / (1 - flops_ratio)
