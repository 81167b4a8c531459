"""Which timm models pat_ray prunes, beside Torch-Pruning on the same models and budget.

One small variant of every timm model family (a family is one of ``timm.list_modules()``),
built without pretrained weights, at a small input where the model takes one. Each library
prunes it to 50% of its FLOPs with L2 magnitude scores; the pruned model must then run forward
and backward (verdicts and FLOPs count: ``_coverage.py``). timm's fused attention is off: under
``no_grad``, and in SDPA's CPU kernel, attention runs where the FLOPs counter does not see it.
Torch-Pruning is driven as its timm example does: global pruning, attention
modules' ``qkv`` registered with their head counts, the classifier left alone; its pruning ratio
is stepped until the FLOPs reach the budget.

    pip install timm    # then
    python benchmarks/timm_coverage.py --jobs 2   # resumable: rows already measured are kept
    python benchmarks/timm_coverage.py --only vit_tiny_patch16_224 swin_tiny_patch4_window7_224
    python benchmarks/timm_coverage.py --redo pat_ray   # pat_ray's cells again, after a change

Each library runs on each model in a child process of its own, with a 150 s limit (a model that
hangs or crashes costs its cell, not the table).
"""

from __future__ import annotations

import argparse
import json
import re

from _coverage import BUDGET, attempt, flops, measure_all, row, write_table

from _report import RESULTS

ROWS = RESULTS / "timm_coverage.jsonl"
SMALL = ("test", "atto", "femto", "pico", "nano", "xxs", "xxsmall", "mini", "tiny", "xs", "xsmall", "small",
         "s0", "b0", "m0", "t0", "s1", "s", "m1", "m")  # fmt: skip
TOO_LARGE = re.compile(r"giant|huge|enormous|large|_1b_|_3b_|gigantic|448|512|384")


def pick_small(names: list[str]) -> str:
    """The family's first model by the size words in its name (no model is built to choose)."""

    def rank(name: str) -> tuple[int, bool, int, int, str]:
        parts = re.split(r"[_\-]", name)
        words = [i for i, word in enumerate(SMALL) for part in parts if part == word or part.startswith(word + "2")]
        numbers = [int(n) for n in re.findall(r"\d+", name)] or [0]
        return (min(words, default=len(SMALL)), bool(TOO_LARGE.search(name)), max(numbers), len(name), name)

    return min(names, key=rank)


def families() -> dict[str, str]:
    import timm

    return {module: pick_small(timm.list_models(module=module)) for module in timm.list_modules()}


def measure_one(name: str, library: str) -> dict:
    """One library on one model (run in a child process): the input it ran at and its row."""
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    built = _build(name)
    if isinstance(built, str):
        return {"input": None, "row": row("failed", why=built)}
    make, x = built
    return {"input": list(x.shape[1:]), "row": attempt(make, x, LIBRARIES[library])}


def _build(name: str):
    """A constructor for the model and an input it runs on: 96 px where the model takes any size."""
    import timm
    import torch

    timm.layers.set_fused_attn(False)  # written-out attention: FlopCounterMode does not see SDPA's CPU kernel
    errors = []
    for kwargs in ({"img_size": 96}, {}):
        try:
            model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
            size = kwargs.get("img_size") or model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
            chans = model.pretrained_cfg.get("input_size", (3,))[0]
            x = torch.randn(2, chans, size, size)
            with torch.no_grad():
                model(x)
        except Exception as err:  # noqa: BLE001 - the next form is tried
            errors.append(f"{type(err).__name__}: {str(err)[:100]}")
            continue

        def make(kwargs=kwargs):
            torch.manual_seed(0)
            return timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()

        return make, x
    return "could not build: " + " / ".join(errors)


def _pat_ray(model, x, dense_flops, attention: str = "heads") -> int:
    """pat_ray's prune; returns how many groups of heads (or head features) lost some."""
    import pat_ray

    arch = pat_ray.prune(model, x, criterion="magnitude", budget=BUDGET, attention=attention)
    return sum(1 for name, kept in arch.kept.items() if name.endswith(f"/{attention}") and len(kept) < arch.sizes[name])


def _pat_ray_head_dim(model, x, dense_flops) -> int:
    """pat_ray pruning each head's width instead of whole heads (what Torch-Pruning's column does)."""
    return _pat_ray(model, x, dense_flops, attention="head_dim")


def _torch_pruning(model, x, dense_flops) -> None:  # attention cut: not told
    """Torch-Pruning as its timm example drives it, stepped until the FLOPs reach the budget."""
    import torch_pruning as tp

    heads = {m.qkv: m.num_heads for m in model.modules() if hasattr(m, "qkv") and hasattr(m, "num_heads")}
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=True,
        pruning_ratio=0.9,
        iterative_steps=30,
        ignored_layers=[classifier] if classifier is not None and hasattr(classifier, "weight") else [],
        num_heads=heads,
    )
    for _ in range(30):
        pruner.step()
        for attention in heads:  # what its example does after each step: the forward reads these
            owner = next(m for m in model.modules() if getattr(m, "qkv", None) is attention)
            owner.head_dim = attention.out_features // (3 * owner.num_heads)
            if hasattr(owner, "attn_dim"):
                owner.attn_dim = owner.head_dim * owner.num_heads
        if flops(model, x) <= BUDGET * dense_flops * 1.01:
            return
    raise RuntimeError("stepped to a 90% pruning ratio without reaching the budget")


LIBRARIES = {"pat_ray": _pat_ray, "pat_ray_head_dim": _pat_ray_head_dim, "torch_pruning": _torch_pruning}
TITLES = {"pat_ray": "pat_ray (heads)", "pat_ray_head_dim": "pat_ray (head_dim)", "torch_pruning": "Torch-Pruning"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="these timm model names (default: one per family)")
    parser.add_argument("--jobs", type=int, default=1, help="models measured at once (each child runs one thread)")
    parser.add_argument("--redo", choices=sorted(LIBRARIES), help="measure this library's cells again (after a change)")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # the child process's entry: MODEL LIBRARY
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(*args.one)))
        return
    picks = {name: name for name in args.only} if args.only else families()
    rows = measure_all(__file__, ROWS, picks, tuple(LIBRARIES), args.redo, args.jobs)
    write_table(  # every row, --only or not
        "timm_coverage.md",
        f"timm coverage: one small model per family pruned to {BUDGET:.0%} of its FLOPs",
        rows,
        TITLES,
        "FLOPs kept by torch's FlopCounterMode (attention included).",
    )


if __name__ == "__main__":
    main()
