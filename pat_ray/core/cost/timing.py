"""Wall-clock timing on a device, shared by the latency probe and the benchmarks, so that
every number pat_ray reports about speed is taken the same way."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import torch


def seconds_of(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call of ``fn``, with the device's queued work finished on both sides
    (CUDA runs asynchronously: without the syncs a timing measures the launch, not the work)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def device_name(device: torch.device) -> str:
    """What a timing was taken on, for the tables that report it: the GPU's model, or the CPU
    and the thread count torch uses (both change CPU timings)."""
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
