"""Which timm models pat_ray prunes, beside Torch-Pruning on the same models and budget.

One small variant of every timm model family (a family is one of ``timm.list_modules()``),
built without pretrained weights, at a small input where the model takes one. Each library
prunes it to 50% of its FLOPs with L2 magnitude scores; the pruned model must then run forward
and backward. FLOPs are counted by torch's ``FlopCounterMode`` with gradients enabled and timm's
fused attention off (under ``no_grad``, and in SDPA's CPU kernel, attention runs where the
counter does not see it), so both columns are one yardstick, attention included.

Verdicts: ``pruned`` (forward and backward ran; FLOPs kept shown), ``refused`` (pat_ray's
``UnsupportedModelError``, which names the op it cannot follow, or ``BudgetError``: the budget is
below the smallest legal sub-network), ``failed`` (the library raised
anything else while pruning), ``broken`` (pruning returned, then the model raised or changed its
output shape). Torch-Pruning is driven as its timm example does: global pruning, attention
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
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _report import RESULTS, header, write

BUDGET = 0.5
ROWS = RESULTS / "timm_coverage.jsonl"
TIMEOUT_S = 150
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
        return {"input": None, "row": _row("failed", why=built)}
    make, x = built
    return {"input": list(x.shape[1:]), "row": _attempt(make, x, LIBRARIES[library])}


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


def _flops(model, x) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.enable_grad(), counter:
        model(x)
    return counter.get_total_flops()


def _attempt(make, x, prune) -> dict:
    from pat_ray.errors import BudgetError, UnsupportedModelError

    model = make()
    dense_flops, out_shape = _flops(model, x), model(x).shape
    try:
        attention_cut = prune(model, x, dense_flops)
    except (UnsupportedModelError, BudgetError) as err:  # a clean refusal: what it cannot follow, or reach
        return _row("refused", why=f"{type(err).__name__}: {str(err).split(';')[0][:160]}")
    except Exception as err:  # noqa: BLE001 - a library's failure is the row
        return _row("failed", why=f"{type(err).__name__}: {str(err)[:160]}")
    try:
        model.train()
        out = model(x)
        out.sum().backward()
        if out.shape != out_shape:
            return _row("broken", why=f"output shape {tuple(out.shape)}, was {tuple(out_shape)}")
        model.eval()
        row = _row("pruned", kept=round(_flops(model, x) / dense_flops, 3))
        return row if attention_cut is None else {**row, "attention_cut": attention_cut}
    except Exception as err:  # noqa: BLE001
        return _row("broken", why=f"{type(err).__name__}: {str(err)[:160]}")


def _row(verdict: str, kept: float | None = None, why: str = "") -> dict:
    return {"verdict": verdict, "flops_kept": kept, "why": why}


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
        if _flops(model, x) <= BUDGET * dense_flops * 1.01:
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
    done = (
        {json.loads(line)["model"]: json.loads(line) for line in ROWS.read_text().splitlines()} if ROWS.exists() else {}
    )
    picks = {name: name for name in args.only} if args.only else families()
    if args.redo:  # first the rows measured before, with that library's cells only
        todo = [
            (f, name)
            for f, name in picks.items()
            if name in done and done[name].get(args.redo, {}).get("commit") != _commit()
        ]
        measure = lambda pick: {  # noqa: E731
            **done[pick[1]],
            **_measure_family(done[pick[1]]["family"], pick[1], libraries=(args.redo,)),
        }
    else:
        todo = [(family, name) for family, name in picks.items() if name not in done]
        measure = lambda pick: _measure_family(*pick)  # noqa: E731
    with ThreadPoolExecutor(args.jobs) as pool:  # each job waits on its child processes
        for row in pool.map(measure, todo):
            done[row["model"]] = row
            with ROWS.open("a") as rows:
                rows.write(json.dumps(row) + "\n")
            print(row["family"], row["model"], *(row.get(lib, {}).get("verdict") for lib in LIBRARIES), flush=True)
    write("timm_coverage.md", _table(sorted(done.values(), key=lambda row: row["family"])))  # every row, --only or not


def _measure_family(family: str, name: str, libraries: tuple[str, ...] = tuple(LIBRARIES)) -> dict:
    results = {library: _in_child(name, library) for library in libraries}
    size = next((r["input"] for r in results.values() if r["input"]), None)
    row = {"model": name, "family": family, **{k: {**r["row"], "commit": _commit()} for k, r in results.items()}}
    return {**row, "input": size} if size is not None else row


def _commit() -> str:
    """The pat_ray commit measured (a cell says which code it describes)."""
    here = Path(__file__).resolve().parent
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def _in_child(name: str, library: str) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--one", name, library]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"input": None, "row": _row("failed", why=f"over {TIMEOUT_S} s")}
    if out.returncode != 0:
        why = f"child process exited {out.returncode}: {out.stderr.strip().splitlines()[-1:]}"
        return {"input": None, "row": _row("failed", why=why)}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _table(rows: list[dict]) -> list[str]:
    import torch

    missing = {"verdict": "-", "flops_kept": None, "why": ""}  # a column not measured on that row yet
    libraries = [lib for lib in LIBRARIES if any(lib in r for r in rows)]

    def count(lib: str, verdict: str) -> int:
        return sum(1 for r in rows if r.get(lib, missing)["verdict"] == verdict)

    verdicts = ("pruned", "refused", "failed", "broken")
    tally = "; ".join(f"{TITLES[lib]}: " + ", ".join(f"{count(lib, v)} {v}" for v in verdicts) for lib in libraries)
    cut = [f"{TITLES[lib]} in {sum(1 for r in rows if r.get(lib, missing).get('attention_cut'))}" for lib in libraries
           if any("attention_cut" in r.get(lib, missing) for r in rows)]  # fmt: skip
    tally += f". Attention pruned (a head, or a feature of every head, removed): {'; '.join(cut)} models" if cut else ""
    lines = header(
        f"timm coverage: one small model per family pruned to {BUDGET:.0%} of its FLOPs",
        torch.device("cpu"),
        f"{len(rows)} families. {tally}. FLOPs kept by torch's FlopCounterMode (attention included).",
    )
    titles = " | ".join(f"{TITLES[lib]} | FLOPs kept" for lib in libraries)
    lines += [f"| family | model | input | {titles} | why ({' / '.join(TITLES[lib] for lib in libraries)}) |",
              "|---|---|---|" + "---|---|" * len(libraries) + "---|"]  # fmt: skip
    for r in rows:
        cells = [r.get(lib, missing) for lib in libraries]
        why = " / ".join(c["why"] for c in cells if c["why"]).replace("|", "\\|")
        size = "x".join(map(str, r["input"])) if r["input"] else "-"
        verdicts_kept = " | ".join(f"{c['verdict']}{_attention(c)} | {c['flops_kept'] or '-'}" for c in cells)
        lines.append(f"| {r.get('family', '')} | {r['model']} | {size} | {verdicts_kept} | {why} |")
    return lines


def _attention(cell: dict) -> str:
    """How many groups of heads (or head features) a pruned cell cut, where any."""
    return f" ({cell['attention_cut']} attn)" if cell.get("attention_cut") else ""


if __name__ == "__main__":
    main()
