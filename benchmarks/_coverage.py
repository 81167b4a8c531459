"""What the coverage benchmarks share (``timm_coverage.py``, ``hf_coverage.py``): one library
pruning one model to a FLOPs budget in a child process of its own, the verdict on what came
back, the rows kept in a JSON-lines file (resumable), and the table.

Verdicts: ``pruned`` (forward and backward ran; FLOPs kept shown), ``refused`` (pat_ray's
``UnsupportedModelError``, which names the op it cannot follow, or ``BudgetError``: the budget is
below the smallest legal sub-network), ``failed`` (the library raised anything else while
pruning, or its child process timed out or died), ``broken`` (pruning returned, then the model
raised or changed its output shape). FLOPs are counted by torch's ``FlopCounterMode`` with
gradients enabled, so both libraries are measured by one yardstick, attention included.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _report import RESULTS, header, write

BUDGET = 0.5
TIMEOUT_S = 150
VERDICTS = ("pruned", "refused", "failed", "broken")


def flops(model, x) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.enable_grad(), counter:
        model(x)
    return counter.get_total_flops()


def row(verdict: str, kept: float | None = None, why: str = "") -> dict:
    return {"verdict": verdict, "flops_kept": kept, "why": why}


def attempt(make: Callable, x, prune: Callable) -> dict:
    """Build the model, prune it with ``prune(model, x, dense_flops)`` (which may return how many
    attention groups it cut), then run it forward and backward: the row of that library."""
    from pat_ray.errors import BudgetError, UnsupportedModelError

    model = make()
    dense_flops, out_shape = flops(model, x), model(x).shape
    try:
        attention_cut = prune(model, x, dense_flops)
    except (UnsupportedModelError, BudgetError) as err:  # a clean refusal: what it cannot follow, or reach
        return row("refused", why=f"{type(err).__name__}: {str(err).split(';')[0][:160]}")
    except Exception as err:  # noqa: BLE001 - a library's failure is the row
        return row("failed", why=f"{type(err).__name__}: {str(err)[:160]}")
    try:
        model.train()
        out = model(x)
        out.sum().backward()
        if out.shape != out_shape:
            return row("broken", why=f"output shape {tuple(out.shape)}, was {tuple(out_shape)}")
        model.eval()
        kept = row("pruned", kept=round(flops(model, x) / dense_flops, 3))
        return kept if not attention_cut else {**kept, "attention_cut": attention_cut}
    except Exception as err:  # noqa: BLE001
        return row("broken", why=f"{type(err).__name__}: {str(err)[:160]}")


def measure_one(build: Callable, name: str, prune: Callable) -> dict:
    """One library on one model, in the child process: the input it ran at and its row.
    ``build(name)`` returns a constructor and an input, or why it could not build."""
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    built = build(name)
    if isinstance(built, str):
        return {"input": None, "row": row("failed", why=built)}
    make, x = built
    return {"input": list(x.shape[1:]), "row": attempt(make, x, prune)}


def step_torch_pruning(model, x, dense_flops: int, heads: dict, ignored: list, after_step: Callable) -> None:
    """Torch-Pruning as its examples drive it: global L2 magnitude, ``heads`` (each attention
    Linear's head count), ``ignored`` layers left alone, ``after_step(pruner)`` setting again what
    the forward reads; its ratio stepped until the FLOPs reach the budget."""
    import torch_pruning as tp

    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=True,
        pruning_ratio=0.9,
        iterative_steps=30,
        ignored_layers=ignored,
        num_heads=heads,
    )
    for _ in range(30):
        pruner.step()
        after_step(pruner)
        if flops(model, x) <= BUDGET * dense_flops * 1.01:
            return
    raise RuntimeError("stepped to a 90% pruning ratio without reaching the budget")


def main(
    script: str,
    what: str,
    picks: Callable[[], dict[str, str]],
    build: Callable,
    libraries: dict[str, Callable],
    titles: dict[str, str],
    table: tuple[str, str, str],
) -> None:
    """A coverage benchmark's command line: measure (resumably) and write the table; ``table``
    is its file name, title and notes. ``--one NAME LIBRARY`` is the child process's entry."""
    parser = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help=f"these {what}, by family or model name (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="models measured at once (each child runs one thread)")
    parser.add_argument("--redo", choices=sorted(libraries), help="measure this library's cells again (after a change)")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # the child process's entry: NAME LIBRARY
    args = parser.parse_args()
    if args.one:
        name, library = args.one
        print(json.dumps(measure_one(build, name, libraries[library])))
        return
    chosen = picks()
    if args.only:
        chosen = {family: name for family, name in chosen.items() if family in args.only or name in args.only}
        chosen |= {name: name for name in args.only if name not in chosen and name not in chosen.values()}
    rows_file = RESULTS / table[0].replace(".md", ".jsonl")
    rows = measure_all(script, rows_file, chosen, tuple(libraries), args.redo, args.jobs)
    write_table(*table[:2], rows, titles, table[2])  # every row, --only or not


def in_child(script: str, name: str, library: str) -> dict:
    """``script --one name library`` in a child process, with a time limit: its JSON answer."""
    command = [sys.executable, str(Path(script).resolve()), "--one", name, library]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"input": None, "row": row("failed", why=f"over {TIMEOUT_S} s")}
    if out.returncode != 0:
        why = f"child process exited {out.returncode}: {out.stderr.strip().splitlines()[-1:]}"
        return {"input": None, "row": row("failed", why=why)}
    return json.loads(out.stdout.strip().splitlines()[-1])


def commit() -> str:
    """The pat_ray commit measured (a cell says which code it describes)."""
    here = Path(__file__).resolve().parent
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def measure_all(
    script: str, rows_file: Path, picks: dict[str, str], libraries: tuple[str, ...], redo: str | None, jobs: int
) -> list[dict]:
    """Every pick (family -> model) not measured yet, or its ``redo`` library's cells again where
    they describe another commit; each row is appended to ``rows_file`` as it comes."""
    done = (
        {json.loads(line)["model"]: json.loads(line) for line in rows_file.read_text().splitlines()}
        if rows_file.exists()
        else {}
    )

    def measure(family: str, name: str, measured: tuple[str, ...]) -> dict:
        results = {library: in_child(script, name, library) for library in measured}
        size = next((r["input"] for r in results.values() if r["input"]), None)
        cells = {k: {**r["row"], "commit": commit()} for k, r in results.items()}
        found = {**done.get(name, {}), "model": name, "family": family, **cells}
        return {**found, "input": size} if size is not None else found

    if redo:
        todo = [
            (f, n, (redo,)) for f, n in picks.items() if n in done and done[n].get(redo, {}).get("commit") != commit()
        ]
    else:
        todo = [(f, n, libraries) for f, n in picks.items() if n not in done]
    with ThreadPoolExecutor(jobs) as pool:  # each job waits on its child processes
        for found in pool.map(lambda pick: measure(*pick), todo):
            done[found["model"]] = found
            with rows_file.open("a") as rows:
                rows.write(json.dumps(found) + "\n")
            print(
                found["family"], found["model"], *(found.get(lib, {}).get("verdict") for lib in libraries), flush=True
            )
    return sorted(done.values(), key=lambda r: r["family"])


def write_table(name: str, title: str, rows: list[dict], titles: dict[str, str], notes: str) -> None:
    import torch

    missing = {"verdict": "-", "flops_kept": None, "why": ""}  # a column not measured on that row yet
    libraries = [lib for lib in titles if any(lib in r for r in rows)]

    def count(lib: str, verdict: str) -> int:
        return sum(1 for r in rows if r.get(lib, missing)["verdict"] == verdict)

    tally = "; ".join(f"{titles[lib]}: " + ", ".join(f"{count(lib, v)} {v}" for v in VERDICTS) for lib in libraries)
    cut = [f"{titles[lib]} in {sum(1 for r in rows if r.get(lib, missing).get('attention_cut'))}" for lib in libraries
           if any("attention_cut" in r.get(lib, missing) for r in rows)]  # fmt: skip
    tally += f". Attention pruned (a head, or a feature of every head, removed): {'; '.join(cut)} models" if cut else ""
    lines = header(title, torch.device("cpu"), f"{len(rows)} models. {tally}. {notes}")
    heads = " | ".join(f"{titles[lib]} | FLOPs kept" for lib in libraries)
    lines += [f"| family | model | input | {heads} | why ({' / '.join(titles[lib] for lib in libraries)}) |",
              "|---|---|---|" + "---|---|" * len(libraries) + "---|"]  # fmt: skip
    for r in rows:
        cells = [r.get(lib, missing) for lib in libraries]
        why = " / ".join(c["why"] for c in cells if c["why"]).replace("|", "\\|").replace("\n", " ")
        size = "x".join(map(str, r["input"])) if r.get("input") else "-"
        verdicts_kept = " | ".join(f"{c['verdict']}{_attention(c)} | {c['flops_kept'] or '-'}" for c in cells)
        lines.append(f"| {r.get('family', '')} | {r['model']} | {size} | {verdicts_kept} | {why} |")
    write(name, lines)


def _attention(cell: dict) -> str:
    """How many groups of heads (or head features) a pruned cell cut, where any."""
    return f" ({cell['attention_cut']} attn)" if cell.get("attention_cut") else ""
