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

The speed settings also run PaT + EPI with a budget in training-step time (``measure:
latency``): the same recipe, but the selection cuts the ranking where the run's latency table
predicts the kept share of the step time, so the FLOPs it removes are the ones that cost time
here. Its table's prediction is compared with the final model's measured step.

    python benchmarks/train_cost.py
"""

from __future__ import annotations

import argparse

import torch

import pat_ray
from _report import fresh_output_dir, header, write
from _timing import saving_efficiency, step_time_ratio
from pat_ray.config import AfterTrainingStart, Config, EPIStart, FixedStart, NeverStart, config_from_dict
from pat_ray.plugins.registry import get_registry
from pat_ray.training.records import RunResult

POLICIES = {
    "dense": NeverStart(),
    "PaT + EPI": None,  # the setting's own EPI policy
    "train-prune-fine-tune": AfterTrainingStart(),
    "prune at init": FixedStart(epoch=0),
}
TIME_BUDGET = "PaT + EPI, step-time budget"
PHASES = ("dense", "pruning", "pruned", "finetune")


def speed_config(epochs: int, samples: int, model: str = "cifar_resnet56", size: int = 32) -> Config:
    params = {"in_channels": 3} if model.startswith("cifar_") else {}
    return config_from_dict(
        {
            "name": f"speed-{model}",
            "output_dir": str(fresh_output_dir()),
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


def with_time_budget(config: Config, fraction: float) -> Config:
    """The same recipe with ``fraction`` of the training step's time as its budget."""
    budget = config.pruning.budget.model_copy(update={"measure": "latency", "fraction": fraction})
    return config.model_copy(update={"pruning": config.pruning.model_copy(update={"budget": budget})})


def warm_up(base: Config) -> None:
    """The first run in a process pays one-off costs (oneDNN kernel creation, allocator growth:
    the first epoch of the first ResNet-56 run took 8.1 s, its other epochs 4.2-4.6 s), which
    would land on whichever pipeline runs first; a short untimed dense run takes them."""
    params = {**base.data.params, "num_samples": 256} if base.data.name == "synthetic" else base.data.params
    short = {
        "name": f"{base.name}-warm-up",
        "start": NeverStart(),
        "data": base.data.model_copy(update={"params": params}),
        "training": base.training.model_copy(update={"epochs": 2}),
    }
    pat_ray.run(base.model_copy(update=short), local=True, quiet=True)


def run_all(base: Config, time_fraction: float | None = None) -> dict[str, RunResult]:
    warm_up(base)
    configs = {
        label: base.model_copy(update={"start": start or base.start, "name": f"{base.name}-{label}"})
        for label, start in POLICIES.items()
    }
    if time_fraction is not None:
        configs[TIME_BUDGET] = with_time_budget(configs["PaT + EPI"], time_fraction).model_copy(
            update={"name": f"{base.name}-time-budget"}
        )
    results = {}
    for label, config in configs.items():
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
        per_phase = {p: sum(h.epoch_seconds for h in r.history if h.phase == p) for p in PHASES}
        phases = " / ".join(f"{per_phase[p]:.1f}" for p in PHASES)
        flops_ratio, wall_ratio = r.train_flops / dense.train_flops, r.wall_seconds / dense.wall_seconds
        setup = sum(h.setup_seconds for h in r.history)
        steady_ratio = (r.wall_seconds - setup) / (dense.wall_seconds - sum(h.setup_seconds for h in dense.history))
        # defined where pruning saves FLOPs; train-prune-fine-tune spends more than dense
        efficiency, steady = "-", "-"
        if flops_ratio < 1:
            efficiency = f"{saving_efficiency(wall_ratio, flops_ratio):.2f}"
            steady = f"{saving_efficiency(steady_ratio, flops_ratio):.2f}"
        start = "-" if r.trigger_epoch is None else str(r.trigger_epoch)
        step, step_efficiency = "-", "-"
        if r.flops_kept < 1:
            ratio = final_step_ratio(r, r.config.data.batch_size, r.config.training.channels_last)
            predicted = r.history[-1].time_kept
            step = f"{'-' if predicted is None else f'{predicted:.3f}'} / {ratio:.3f}"
            step_efficiency = f"{saving_efficiency(ratio, r.flops_kept):.2f}"
        rows.append(
            f"| {setting} | {label} | {start} | {r.final_accuracy:.4f} | {r.flops_kept:.3f} | {step} "
            f"| {flops_ratio:.3f} | {r.wall_seconds:.1f} | {setup:.1f} | {phases} | {wall_ratio:.3f} | {efficiency} "
            f"| {steady} | {step_efficiency} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="speed setting's epochs")
    parser.add_argument("--samples", type=int, default=1024, help="speed setting's training images")
    args = parser.parse_args()
    # ResNet-56's smallest sub-network in 16-channel multiples still takes ~0.6 of the step here
    narrow = speed_config(args.epochs, args.samples)
    rows = rows_for("speed: ResNet-56, synthetic 3x32x32", run_all(narrow, time_fraction=0.65))
    wide = speed_config(args.epochs, args.samples, model="resnet18", size=64)
    rows += rows_for("speed: ResNet-18, synthetic 3x64x64", run_all(wide, time_fraction=0.5))
    digits = Config(output_dir=fresh_output_dir(), name="accuracy")
    assert isinstance(digits.start, EPIStart)
    rows += rows_for("accuracy: digits default", run_all(digits))
    lines = header(
        "Training cost per pipeline",
        torch.device("cpu"),
        f"Speed settings: {args.epochs} epochs of {args.samples} images, batch 64, channels_last, channels kept in "
        "multiples of 16; "
        "accuracy setting: "
        "pipelines/digits.yaml (30 epochs). train-prune-fine-tune fine-tunes for a full schedule at 0.1x lr. "
        "Each setting starts with an untimed 2-epoch dense run (one-off kernel creation). "
        "Wall = the whole run (setup, training, evaluation, snapshots, checkpoints); setup = the time before the "
        "first epoch (tracing, the layer timing of a step-time budget, a prune at init), paid once per run however "
        "long it is, so the efficiency is also given without it; phases in seconds (sums of epoch times). "
        "Step time kept: the final model's training step over "
        "the dense model's, as the run's latency table predicts it (step-time budget only) / as measured (the two "
        "models timed in alternation, median of 9 per-round ratios, same batch and layout as the run); final-step "
        "efficiency: the efficiency that measured step alone would give.",
    )
    lines += [
        "| setting | pipeline | start epoch | final acc | FLOPs kept | step time kept: predicted / measured "
        "| train FLOPs x dense | wall s | setup s | dense / pruning / pruned / finetune s | wall x dense | efficiency "
        "| efficiency, setup excluded | final-step efficiency |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    write("train_cost.md", lines)


if __name__ == "__main__":
    main()
