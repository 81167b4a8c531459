"""The default digits pipeline under each start policy, measured in one process.

Dense (never), PaT+EPI (the default), Early-Bird, and train-prune-fine-tune (after_training,
fine-tuning for a full schedule: the conventional ~2x pipeline). Writes
benchmarks/results/digits_policies.md with accuracy, FLOPs kept, training FLOPs and wall
time, each cost also as a ratio to the dense run measured here, plus the EPI curve and the
snapshot overhead (share of epoch time spent computing scores + selection + EPI).

    python benchmarks/digits_policies.py
"""

from __future__ import annotations

from pathlib import Path

import torch

import pat_ray
from _report import fresh_output_dir, header
from pat_ray.config import AfterTrainingStart, Config, EarlyBirdStart, NeverStart

RESULTS = Path(__file__).parent / "results" / "digits_policies.md"


def main() -> None:
    base = Config(output_dir=fresh_output_dir())
    policies = {
        "dense (never)": NeverStart(),
        "PaT + EPI (default)": base.start,
        "PaT + Early-Bird": EarlyBirdStart(),
        "train-prune-fine-tune": AfterTrainingStart(),
    }
    results = {}
    for label, start in policies.items():
        cfg = base.model_copy(update={"start": start, "name": start.kind})
        results[label] = pat_ray.run(cfg, local=True, quiet=True)
        print(label, results[label].final_accuracy, flush=True)
    dense = results["dense (never)"]
    rows = [
        "| policy | start epoch | final acc | FLOPs kept | training FLOPs | x dense | wall s | x dense |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        rows.append(
            f"| {label} | {r.trigger_epoch if r.trigger_epoch is not None else '-'} | {r.final_accuracy:.4f} "
            f"| {r.flops_kept:.3f} | {r.train_flops:.3e} | {r.train_flops / dense.train_flops:.3f} "
            f"| {r.wall_seconds:.1f} | {r.wall_seconds / dense.wall_seconds:.3f} |"
        )
    epi = results["PaT + EPI (default)"]
    tpf = results["train-prune-fine-tune"]
    curve = [h.epi for h in dense.history]
    snapshot_share = sum(h.snapshot_seconds for h in dense.history[1:]) / sum(
        h.epoch_seconds for h in dense.history[1:]
    )
    text = [
        *header(
            "Digits pipeline: start policies",
            torch.device("cpu"),
            "Config: pipelines/digits.yaml, one run per policy, same seed.",
        ),
        *rows,
        "",
        f"PaT + EPI vs train-prune-fine-tune: training FLOPs {epi.train_flops / tpf.train_flops:.3f}x, "
        f"wall time {epi.wall_seconds / tpf.wall_seconds:.3f}x, accuracy {100 * (epi.final_accuracy - tpf.final_accuracy):+.2f} points.",
        "",
        "EPI curve of the dense run, epochs 1..N (structural similarity; a run whose start policy is not "
        "`epi` tracks EPI over a window of 5):",
        "",
        "`" + ", ".join("-" if v is None else f"{v:.4f}" for v in curve) + "`",
        "",
        f"Snapshot overhead (scores + selection + EPI) in the dense run: {100 * snapshot_share:.2f}% of epoch time.",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(text) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
