"""Which torchvision classification models pat_ray prunes, and which it refuses (and why).

Every classification builder but ViT / Swin / MaxViT, untrained, one-shot pruned to 50% of its
FLOPs with magnitude scores, then run once more: "pruned" (with the FLOPs kept, measured
after), "refused" (UnsupportedModelError: the tracer named the op it cannot follow), or
"ERROR" (anything else: a bug). `pat_ray.prune` already runs the pruned model once and
raises naming the failing layer, so a silently broken model shows up as "refused".

    python benchmarks/zoo_coverage.py      # ~5 min on 2 CPU cores
"""

from __future__ import annotations

import time

import torch
import torchvision

import pat_ray
from _report import header, write
from pat_ray.core.graph import UnsupportedModelError

LARGE = ("efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_l", "efficientnet_v2_m",
         "regnet_y_128", "regnet_y_32", "regnet_y_16", "vgg16", "vgg19")  # fmt: skip


def models() -> list[str]:
    return [
        name
        for name in torchvision.models.list_models(module=torchvision.models)
        if not name.startswith(("vit", "swin", "maxvit"))
    ]


def try_one(name: str) -> tuple[str, str, str]:
    size = 299 if "inception" in name else 64 if name.startswith(LARGE) else 224
    kw = {"aux_logits": False, "init_weights": False} if name in ("inception_v3", "googlenet") else {}
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10, **kw).eval()
    x = torch.randn(1, 3, size, size)
    started = time.perf_counter()
    try:
        dense = pat_ray.measure_cost(model, x).flops
        pat_ray.prune(model, x, budget=0.5)
        kept = pat_ray.measure_cost(model, x).flops / dense
        model(x)
    except UnsupportedModelError as err:
        return "refused", "-", str(err).split(";")[0][:140]
    except Exception as err:  # a bug: report it, keep going
        return "ERROR", "-", f"{type(err).__name__}: {str(err)[:140]}"
    return "pruned", f"{kept:.3f}", f"{size}px, {time.perf_counter() - started:.1f} s"


def main() -> None:
    torch.set_num_threads(1)
    rows = [(name, *try_one(name)) for name in models()]
    for row in rows:
        print(*row, sep="\t", flush=True)
    counts = {status: sum(1 for r in rows if r[1] == status) for status in ("pruned", "refused", "ERROR")}
    lines = header(
        "Tracer coverage: torchvision classification models at 50% FLOPs",
        torch.device("cpu"),
        f"{counts['pruned']} pruned, {counts['refused']} refused, {counts['ERROR']} errors.",
    )
    lines += ["| model | result | FLOPs kept | input, time / why refused |", "|---|---|---:|---|"]
    lines += [f"| {name} | {status} | {kept} | {detail.replace('|', '/')} |" for name, status, kept, detail in rows]
    write("zoo_coverage.md", lines)


if __name__ == "__main__":
    main()
