"""Prune time of the pat_ray that is importable: for A/B runs of two checkouts on one machine.

Times ``pat_ray.prune`` (trace, select, surgery, the post-surgery check) at 50% of FLOPs on
torchvision models at 64 px, one thread, median of 3, and prints one JSON line. Run it
alternately with two checkouts on ``PYTHONPATH`` (``git worktree add /tmp/a REV``) so that both
see the same machine load, then compare medians per model:

    for round in 1 2 3; do for v in a b; do
      PAT_RAY_DISABLE_PLUGIN_AUTOLOAD=1 PYTHONPATH=/tmp/$v python benchmarks/ab_prune.py resnet50 ... | sed "s/^/$v /"
    done; done
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time

import torch
import torchvision

import pat_ray


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    seconds = {}
    for name in names:
        torch.manual_seed(0)
        dense = torchvision.models.get_model(name, weights=None, num_classes=10)
        x = torch.randn(2, 3, 64, 64)
        times = []
        for _ in range(3):
            model = copy.deepcopy(dense)
            started = time.perf_counter()
            pat_ray.prune(model, x, budget=0.5)
            times.append(time.perf_counter() - started)
        seconds[name] = statistics.median(times)
    print(json.dumps(seconds))


if __name__ == "__main__":
    main(sys.argv[1:])
