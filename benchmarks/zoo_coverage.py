"""Which torchvision classification models pat_ray prunes, and which it refuses (and why).

Every classification builder (the transformers included), untrained, one-shot pruned to 30%, 50%
and 70% of its FLOPs with magnitude scores, then run once more: "pruned" (with the FLOPs kept
at each budget, measured after), "refused" (UnsupportedModelError: the tracer named the op it
cannot follow), or "ERROR" (anything else: a bug). `pat_ray.prune` already runs the pruned
model once and raises naming the failing layer, so a silently broken model shows up as
"refused".

    python benchmarks/zoo_coverage.py      # ~15 min on 2 CPU cores
"""

from __future__ import annotations

import copy
import time

import torch

import pat_ray
from _report import header, write
from _zoo import build, every_classifier, input_size
from pat_ray.errors import UnsupportedModelError

BUDGETS = (0.3, 0.5, 0.7)


def try_one(name: str) -> tuple[str, list[str], str]:
    size = input_size(name)
    dense = build(name, num_classes=10).eval()
    x = torch.randn(1, 3, size, size)
    full = pat_ray.measure_cost(dense, x).flops
    kept, started = [], time.perf_counter()
    try:
        for budget in BUDGETS:
            model = copy.deepcopy(dense)
            pat_ray.prune(model, x, budget=budget)
            kept.append(f"{pat_ray.measure_cost(model, x).flops / full:.3f}")
            model(x)
    except UnsupportedModelError as err:
        return "refused", ["-"] * len(BUDGETS), str(err).split(";")[0][:140]
    except Exception as err:  # a bug: report it, keep going
        return "ERROR", ["-"] * len(BUDGETS), f"{type(err).__name__}: {str(err)[:140]}"
    return "pruned", kept, f"{size}px, {time.perf_counter() - started:.1f} s"


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for name in every_classifier():
        rows.append((name, *try_one(name)))
        print(*rows[-1], sep="\t", flush=True)
    counts = {status: sum(1 for r in rows if r[1] == status) for status in ("pruned", "refused", "ERROR")}
    lines = header(
        "Tracer coverage: every torchvision classification model at 30 / 50 / 70% FLOPs",
        torch.device("cpu"),
        f"{counts['pruned']} pruned, {counts['refused']} refused, {counts['ERROR']} errors.",
    )
    lines += [
        "| model | result | FLOPs kept at 30% | at 50% | at 70% | input, time for all three / why refused |",
        "|---|---|---:|---:|---:|---|",
    ]
    lines += [
        f"| {name} | {status} | {' | '.join(kept)} | {detail.replace('|', '/')} |"
        for name, status, kept, detail in rows
    ]
    write("zoo_coverage.md", lines)


if __name__ == "__main__":
    main()
