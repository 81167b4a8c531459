"""Wall time of the digits pipeline: in-process vs Ray Train with 1 and 2 workers, and the
cost of the EPI gossip (score all-reduce + fingerprint all-gather + trigger broadcast).

    RAY_AUTH_MODE=disabled python benchmarks/scaling.py

Writes benchmarks/results/scaling.md. Ratios are against the in-process run measured here.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import torch

import pat_ray
from _report import fresh_output_dir, header
from pat_ray.config import Config
from pat_ray.distributed.train import run_on_ray

RESULTS = Path(__file__).parent / "results" / "scaling.md"


def main() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    base = Config(output_dir=fresh_output_dir())
    rows = []
    local = pat_ray.run(base, local=True, quiet=True)
    rows.append(("in-process (--local)", local, None))
    ray.init(num_cpus=2, log_to_driver=False)
    storage = Path("runs/benchmarks/ray").resolve()
    for workers in (1, 2):
        cfg = base.model_copy(update={"scaling": base.scaling.model_copy(update={"num_workers": workers})})
        name = f"scaling-{workers}w-{uuid.uuid4().hex[:6]}"
        result = run_on_ray(cfg, storage_path=storage, run_name=name)
        lines = [json.loads(x) for x in (storage / name / "ranks" / "rank0.jsonl").read_text().splitlines()]
        rows.append((f"Ray Train, {workers} worker{'s' * (workers > 1)}", result, lines))
    table = [
        "| run | final acc | FLOPs kept | wall s | x in-process | gossip ms / epoch | gossip bytes / epoch | gossip share of epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r, lines in rows:
        gossip = "- | - | -"
        if lines:
            per_epoch_s = lines[-1]["gossip_seconds"] / len(lines)
            per_epoch_b = lines[-1]["gossip_bytes"] / len(lines)
            epoch_s = sum(x["epoch_seconds"] for x in lines) / len(lines)
            gossip = f"{1000 * per_epoch_s:.2f} | {per_epoch_b:.0f} | {100 * per_epoch_s / epoch_s:.2f}%"
        table.append(
            f"| {label} | {r.final_accuracy:.4f} | {r.flops_kept:.3f} | {r.wall_seconds:.1f} "
            f"| {r.wall_seconds / local.wall_seconds:.2f} | {gossip} |"
        )
    text = [
        *header(
            "Scaling: in-process vs Ray Train workers (digits pipeline)",
            torch.device("cpu"),
            f"ray {ray.__version__}, {os.cpu_count()} CPUs; config: pipelines/digits.yaml (RAY_AUTH_MODE=disabled). "
            "Gossip numbers are rank 0's, averaged over all epochs.",
        ),
        *table,
    ]
    RESULTS.write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
