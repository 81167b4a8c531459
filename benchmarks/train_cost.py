"""Training cost of each pipeline, measured: wall time per phase, training FLOPs, accuracy.

Dense, PaT + EPI, train-prune-fine-tune (a full fine-tune schedule) and prune-at-init on
the same config, in one process, one after another:
- ``speed``: ResNet-56 on CIFAR-shaped synthetic data (3x32x32, random labels), and the wider
  torchvision ResNet-18 on 3x64x64, where each layer has enough work for time to follow FLOPs;
- ``accuracy``: the default digits pipeline (cifar_resnet20 on 8x8 digits).

Efficiency = (wall-time saving measured) / (saving implied by training FLOPs), both against
the dense run: 1.0 means the pruned model's real speed follows its FLOPs. To tell the run's
own overheads from the hardware's, each pruned run's final model is also timed alone: one
training step on a batch, against the dense model's, in the same process ("final step").

    python benchmarks/train_cost.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import pat_ray
from _report import header, write
from _timing import saving_efficiency, step_time_ratio
from pat_ray.config import AfterTrainingStart, Config, EPIStart, FixedStart, NeverStart, config_from_dict
from pat_ray.engine import RunResult
from pat_ray.registry import get_registry

POLICIES = {
    "dense": NeverStart(),
    "PaT + EPI": None,  # the setting's own EPI policy
    "train-prune-fine-tune": AfterTrainingStart(),
    "prune at init": FixedStart(epoch=0),
}
PHASES = ("dense", "pruning", "pruned", "finetune")


def speed_config(epochs: int, samples: int, model: str = "cifar_resnet56", size: int = 32) -> Config:
    params = {"in_channels": 3} if model.startswith("cifar_") else {}
    return config_from_dict(
        {
            "name": f"speed-{model}",
            "output_dir": "runs/benchmarks",
            "model": {"name": model, "params": params},
            "data": {
                "name": "synthetic",
                "params": {"num_samples": samples, "shape": [3, size, size]},
                "batch_size": 64,
            },
            # NHWC + multiples of 16 channels: oneDNN (and GPU) conv kernels work in 8/16-channel
            # blocks, so only then does removing channels remove work (see BENCHMARKS.md)
            "training": {"epochs": epochs, "channels_last": True},
            # the pruning phase inside one epoch, as in a real run (the default 3 steps 10 iterations
            # apart take 30 of CIFAR-10's 390 per epoch; here they would fill 2 of the 6 epochs)
            "pruning": {"budget": {"fraction": 0.5, "measure": "flops", "round_to": 16}, "interval": 2},
            # random labels: a permissive EPI rule, as a calibrated one would fire on real data
            "start": {"kind": "epi", "window": 2, "patience": 1, "tau": 0.5},
        }
    )


def run_all(base: Config) -> dict[str, RunResult]:
    results = {}
    for label, start in POLICIES.items():
        config = base.model_copy(update={"start": start or base.start, "name": f"{base.name}-{label}"})
        results[label] = pat_ray.run(config, local=True, quiet=True)
        print(f"{base.name} {label}: {results[label].wall_seconds:.1f} s", flush=True)
    return results


def final_step_ratio(result: RunResult, batch: int, channels_last: bool) -> float:
    """Training-step time of the run's final model over the dense model's, outside the run."""
    pruned, ckpt = pat_ray.load_checkpoint(result.checkpoint)
    dense = get_registry().create("model", ckpt.model_name, **ckpt.model_params)
    x = torch.randn(batch, *ckpt.input_shape[1:])
    return step_time_ratio(pruned, dense, x, torch.device("cpu"), channels_last)


def rows_for(setting: str, results: dict) -> list[str]:
    dense = results["dense"]
    rows = []
    for label, r in results.items():
        per_phase = {p: sum(h["epoch_seconds"] for h in r.history if h["phase"] == p) for p in PHASES}
        phases = " / ".join(f"{per_phase[p]:.1f}" for p in PHASES)
        flops_ratio, wall_ratio = r.train_flops / dense.train_flops, r.wall_seconds / dense.wall_seconds
        # defined where pruning saves FLOPs; train-prune-fine-tune spends more than dense
        efficiency = f"{saving_efficiency(wall_ratio, flops_ratio):.2f}" if flops_ratio < 1 else "-"
        start = "-" if r.trigger_epoch is None else str(r.trigger_epoch)
        step = "-"
        if r.flops_kept < 1:
            ratio = final_step_ratio(r, r.config.data.batch_size, r.config.training.channels_last)
            step = f"{ratio:.3f} / {saving_efficiency(ratio, r.flops_kept):.2f}"
        rows.append(
            f"| {setting} | {label} | {start} | {r.final_accuracy:.4f} | {r.flops_kept:.3f} | {flops_ratio:.3f} "
            f"| {r.wall_seconds:.1f} | {phases} | {wall_ratio:.3f} | {efficiency} | {step} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="speed setting's epochs")
    parser.add_argument("--samples", type=int, default=1024, help="speed setting's training images")
    args = parser.parse_args()
    rows = rows_for("speed: ResNet-56, synthetic 3x32x32", run_all(speed_config(args.epochs, args.samples)))
    wide = speed_config(args.epochs, args.samples, model="resnet18", size=64)
    rows += rows_for("speed: ResNet-18, synthetic 3x64x64", run_all(wide))
    digits = Config(output_dir=Path("runs/benchmarks"), name="accuracy")
    assert isinstance(digits.start, EPIStart)
    rows += rows_for("accuracy: digits default", run_all(digits))
    lines = header(
        "Training cost per pipeline",
        torch.device("cpu"),
        f"Speed settings: {args.epochs} epochs of {args.samples} images, batch 64, channels_last, channels kept in "
        "multiples of 16; "
        "accuracy setting: "
        "pipelines/digits.yaml (30 epochs). train-prune-fine-tune fine-tunes for a full schedule at 0.1x lr. "
        "Wall = the run's wall time (training, evaluation, snapshots, checkpoints); phases in seconds (sums of "
        "epoch times). Final step: the final model's training step alone over the dense model's, and the "
        "efficiency that alone would give (the two models timed in alternation, median of 9 per-round ratios, same "
        "batch and layout as the run).",
    )
    lines += [
        "| setting | pipeline | start epoch | final acc | FLOPs kept | train FLOPs x dense | wall s "
        "| dense / pruning / pruned / finetune s | wall x dense | efficiency | final step x dense / efficiency |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    write("train_cost.md", lines)


if __name__ == "__main__":
    main()
