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

import re

from _coverage import BUDGET, main, step_torch_pruning

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
    """Torch-Pruning as its timm example drives it: every ``qkv`` with its head count, the
    classifier ignored, ``head_dim`` set again after each step."""
    heads = {m.qkv: m.num_heads for m in model.modules() if hasattr(m, "qkv") and hasattr(m, "num_heads")}
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None

    def after_step(pruner) -> None:
        for attention in heads:  # the forward reads these
            owner = next(m for m in model.modules() if getattr(m, "qkv", None) is attention)
            owner.head_dim = attention.out_features // (3 * owner.num_heads)
            if hasattr(owner, "attn_dim"):
                owner.attn_dim = owner.head_dim * owner.num_heads

    ignored = [classifier] if classifier is not None and hasattr(classifier, "weight") else []
    step_torch_pruning(model, x, dense_flops, heads, ignored, after_step)


LIBRARIES = {"pat_ray": _pat_ray, "pat_ray_head_dim": _pat_ray_head_dim, "torch_pruning": _torch_pruning}
TITLES = {"pat_ray": "pat_ray (heads)", "pat_ray_head_dim": "pat_ray (head_dim)", "torch_pruning": "Torch-Pruning"}


if __name__ == "__main__":
    main(
        __file__,
        "timm model names",
        families,
        _build,
        LIBRARIES,
        TITLES,
        (
            "timm_coverage.md",
            f"timm coverage: one small model per family pruned to {BUDGET:.0%} of its FLOPs",
            "FLOPs kept by torch's FlopCounterMode (attention included).",
        ),
    )
