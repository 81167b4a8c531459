"""Learning-rate multipliers per iteration: linear warm-up, then cosine / step / constant.

Pure functions of the iteration index, so the schedule survives surgery (parameters keep
their identity) and a resumed run lands on the same learning rate.
"""

from __future__ import annotations

import bisect
import math

from pat_ray.config import ScheduleConfig


def lr_multiplier(schedule: ScheduleConfig, iteration: int, iters_per_epoch: int, epochs: int) -> float:
    """The factor applied to the base lr at ``iteration`` (0-based) of an ``epochs`` run."""
    total = max(1, iters_per_epoch * epochs)
    warmup = int(schedule.warmup_epochs * iters_per_epoch)
    if iteration < warmup:
        return (iteration + 1) / warmup
    if schedule.kind == "constant":
        return 1.0
    if schedule.kind == "step":
        epoch = iteration // max(1, iters_per_epoch)
        return schedule.gamma ** bisect.bisect_right(sorted(schedule.step_epochs), epoch)
    progress = (iteration - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
