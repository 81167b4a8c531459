"""Wall time of the default pipeline as a user runs it: ``pat-ray run --local`` against
``pat-ray run`` on Ray (1 worker: one Ray task; 2 workers: Ray Train), each a fresh process that
starts its own Ray, and the 1-worker run again joining a Ray started once with ``ray start
--head``; where Ray's time goes (start-up, per-epoch report + checkpoint, the rest); the cost of
the EPI gossip (score all-reduce + fingerprint all-gather + trigger broadcast); and Ray Train's
floor, which is why one worker runs as a task.

    RAY_AUTH_MODE=disabled python benchmarks/scaling.py

Writes benchmarks/results/scaling.md. Every ratio is against the --local run measured here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _report import fresh_output_dir, header

RESULTS = Path(__file__).parent / "results" / "scaling.md"
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def timed_process(args: list[str], env: dict[str, str] = ENV) -> tuple[float, str]:
    """Seconds of one fresh Python process running ``args``, and its output."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - started, done.stdout + done.stderr


EMPTY_FIT = """
import ray, ray.train
from ray.train import RunConfig, ScalingConfig
from pat_ray.distributed import ray_private
ray_private.tune_local_train()  # the Train settings a pat_ray run passes a cluster it joins
ray.init(address="auto", runtime_env={{"env_vars": ray_private.train_settings()}},
         logging_config=ray.LoggingConfig(log_level="WARNING"))
def loop():
    ray.train.report({{"done": 1}})
config = RunConfig(storage_path={storage!r}, name="empty")
trainer = ray_private.torch_trainer_without_datasets()  # the trainer a pat_ray run uses
trainer(loop, scaling_config=ScalingConfig(num_workers=1), run_config=config).fit()
"""


TASK_FLOOR = """
import ray
ray.init(address="auto", logging_config=ray.LoggingConfig(log_level="WARNING"))
@ray.remote(num_cpus=2, max_calls=1)
def worker():
    import pat_ray.distributed.worker, pat_ray.training.engine  # what a one-worker task imports
ray.get(worker.remote())
"""


def joined_run(folder: Path) -> tuple[dict, float, float]:
    """The 1-worker run again, joining a Ray started beforehand with ``ray start --head`` (in a
    temp dir of its own, which RAY_TMPDIR points the run at), as for repeated runs: the run after
    the cluster's first one is measured. Then Ray Train's floor on that cluster: a fresh process
    whose TorchTrainer runs an empty training function on one worker (no torch work, no
    pat_ray), after one such fit has started Train's once-per-cluster actors; and the one-task
    path's floor: a fresh process joining the cluster to run one task that imports what a
    one-worker run's task imports, and nothing else."""
    temp = Path(tempfile.mkdtemp(prefix="prs_", dir="/tmp"))  # short: Unix socket paths are limited
    env = {**ENV, "RAY_TMPDIR": str(temp)}
    ray = str(Path(sys.executable).with_name("ray"))
    start = [ray, "start", "--head", "--num-cpus=2", f"--temp-dir={temp / 'ray'}", "--disable-usage-stats"]
    subprocess.run(start, env=env, check=True, capture_output=True)
    try:
        cli_run(folder, "joined_first", 1, env)  # the cluster's first job
        joined = cli_run(folder, "joined", 1, env)
        task_floor_s, _ = timed_process(["-c", TASK_FLOOR], env)
        empty_fit = ["-c", EMPTY_FIT.format(storage=str(folder / "empty"))]
        timed_process(empty_fit, env)
        floor_s, _ = timed_process(empty_fit, env)
        return joined, task_floor_s, floor_s
    finally:
        subprocess.run([ray, "stop"], env=env, capture_output=True)


def cli_run(folder: Path, name: str, workers: int | None, env: dict[str, str] = ENV) -> dict:
    """``pat-ray run`` of the default pipeline (MLflow off: this measures training, not tracking)."""
    config = folder / f"{name}.yaml"
    scaling = f"scaling: {{num_workers: {workers}}}\n" if workers else ""
    config.write_text(f"name: {name}\noutput_dir: {folder}\ntracking: {{mlflow: false}}\n{scaling}")
    seconds, output = timed_process(["-m", "pat_ray.cli", "run", str(config), *([] if workers else ["--local"])], env)
    run_dir = folder / name / "latest"  # the run's own version folder
    history = json.loads((run_dir / "history.json").read_text())
    records = history["history"] if isinstance(history, dict) else history
    ranks = run_dir / "ranks.jsonl"  # written by the driver's side from what each rank reported
    rank0 = [json.loads(line)["ranks"][0] for line in ranks.read_text().splitlines()] if ranks.is_file() else []
    size = (run_dir / "last.pt").stat().st_size
    return {"seconds": seconds, "records": records, "rank0": rank0, "output": output, "checkpoint_kb": size / 1024}


ONE, JOINED = "Ray, 1 worker (one task)", "Ray, 1 worker (one task), joining `ray start --head`"
TARGETS = {ONE: 2.0, JOINED: 1.5}  # the most a Ray run may take against --local: cold, and on a running Ray


def main() -> None:
    folder = fresh_output_dir()
    import_s, _ = timed_process(["-c", "import pat_ray.cli, pat_ray.training.engine"])
    ray_init_s, _ = timed_process(["-c", "import ray; ray.init(num_cpus=2); ray.shutdown()"])
    runs = {"--local": cli_run(folder, "local", None)}
    runs[ONE] = cli_run(folder, "ray1", 1)
    runs["Ray Train, 2 workers"] = cli_run(folder, "ray2", 2)
    runs[JOINED], task_floor_s, floor_s = joined_run(folder)
    local_s = runs["--local"]["seconds"]
    table = [
        "| `pat-ray run` | final acc | wall s (process) | x --local | epochs s | our setup s | Ray report + checkpoint "
        "s / epoch | share of epoch | rest s (Ray start-up, worker group, teardown) | gossip ms / epoch | last.pt KB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rests: dict[str, float] = {}
    for label, run in runs.items():
        records, rank0 = run["records"], run["rank0"]
        epochs_s = sum(r["epoch_seconds"] for r in records)
        setup_s = sum(r["setup_seconds"] for r in records)
        # each report carries the cost of the one before it: epochs 1..N-1 are measured
        measured = [m["previous_report_seconds"] for m in rank0[1:]]
        per_epoch = sum(measured) / len(measured) if measured else 0.0
        report_s = per_epoch * len(rank0)
        gossip = f"{1000 * rank0[-1]['gossip_seconds'] / len(rank0):.2f}" if rank0 else "-"
        rest = rests[label] = run["seconds"] - epochs_s - setup_s - report_s
        table.append(
            f"| {label} | {records[-1]['val_acc']:.4f} | {run['seconds']:.1f} | {run['seconds'] / local_s:.2f} "
            f"| {epochs_s:.1f} | {setup_s:.1f} | {per_epoch:.3f} | {100 * per_epoch / (epochs_s / len(records)):.1f}% "
            f"| {rest:.1f} | {gossip} | {run['checkpoint_kb']:.0f} |"
        )
    verdicts = [
        f"{label}: {runs[label]['seconds'] / local_s:.2f}x --local, target {limit:g}x: "
        + ("met" if runs[label]["seconds"] / local_s <= limit else "missed")
        for label, limit in TARGETS.items()
    ]
    text = [
        *header(
            "Scaling: `pat-ray run --local` vs on Ray (default digits pipeline)",
            torch.device("cpu"),
            f"{os.cpu_count()} CPUs. Each run is a fresh process, as a user starts it (Ray runs start their own "
            "Ray, but the last, which joins one started before it and left running, after one run on it); MLflow off. One worker runs "
            "as one Ray task streaming its epochs to the driver, several as a Ray Train `TorchTrainer`. Columns: "
            "the process's wall time; the sum of the epochs' own time; our setup (tracing, budget); Ray's report + "
            "checkpoint per epoch (rank 0: around `ray.train.report`, which returns once Ray has persisted the "
            "checkpoint, or around the task's hand-off of the epoch to its stream); "
            f"the rest, which includes Python + pat_ray import ({import_s:.1f} s, measured alone) for --local "
            f"and also Ray's start ({ray_init_s:.1f} s for `ray.init` alone; joining a running Ray skips it), the "
            "worker's (or Train's worker group's) start-up and teardown for Ray runs.",
        ),
        *table,
        "",
        *[f"- {line}" for line in verdicts],
        "",
        f"Where a joined one-task run's rest goes: a fresh process that joins the cluster and runs one task "
        f"importing what the run's task imports (torch, pat_ray's engine) and nothing else takes {task_floor_s:.1f} s, "
        f"against {import_s:.1f} s for the local run's own imports; the run's rest of "
        f"{rests[JOINED]:.1f} s is that floor, "
        "the driver's config checks before the task starts, and the results' way back.",
        "",
        "Ray Train's floor on the joined cluster (after one empty fit, as a repeated run finds it): a fresh process whose `TorchTrainer` (pat_ray's, with its Train settings) fits an empty "
        f"training function on 1 worker takes {floor_s:.1f} s ({floor_s / local_s:.2f}x the whole --local run): "
        "Train's controller, its helper actors and the worker each start a Python process. A one-worker run needs "
        "none of them, which is why it runs as one task.",
    ]
    RESULTS.write_text("\n".join(text) + "\n")
    print("\n".join(text))
    print(f"\nConsole of the {ONE} run:\n" + runs[ONE]["output"])


if __name__ == "__main__":
    main()
