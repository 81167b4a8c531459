"""The oracle sweep's plan and verdict, without Ray: which trials to run, and what they showed.

The paper's evidence that EPI picks a good start epoch is a grid search: the same PaT recipe
with pruning started at every candidate epoch, next to the single EPI run. ``trial_configs``
turns one pipeline config into that grid (plus the Early-Bird, dense and
train-prune-fine-tune baselines); ``summarize`` reduces the finished trials to the numbers
the report states. ``pat_ray.distributed.tune`` runs the trials.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pat_ray.config import (
    Config,
    EPIStart,
    FixedStart,
    oracle_grid,
)
from pat_ray.config.start import policy_of_kind
from pat_ray.core.epi import calibrate_tau_curves, trigger_epoch
from pat_ray.storage import Location
from pat_ray.sweep.stats import GroupStats, Verdict, best_and_reference, group_stats, pooled_std
from pat_ray.training.checkpoint import atomic_write_text

if TYPE_CHECKING:
    from pat_ray.training.records import RunResult

RESULT_FILE = "oracle.json"


def fixed_label(epoch: int) -> str:
    return f"fixed-{epoch}"


def seeds_of(config: Config) -> list[int]:
    """The seeds every trial runs with: ``oracle.seeds``, else the pipeline's own seed."""
    return list(config.oracle.seeds) if config.oracle.seeds else [config.training.seed]


def trial_label(group: str, seed: int, seeds: list[int]) -> str:
    """``fixed-4`` for a one-seed sweep; ``fixed-4-s1`` when every trial runs per seed."""
    return group if len(seeds) == 1 else f"{group}-s{seed}"


def group_of(label: str) -> str:
    head, _, tail = label.rpartition("-s")
    return head if head and tail.isdigit() else label


def epi_policy(config: Config) -> EPIStart:
    """The EPI settings under test: the config's own, else the paper's defaults."""
    return cast(EPIStart, policy_of_kind(config.start, "epi"))


def trial_configs(config: Config) -> dict[str, Config]:
    """One config per trial, keyed by its label: ``fixed-<epoch>`` for the grid, then policies,
    each once per seed of ``oracle.seeds`` (label suffix ``-s<seed>``).

    Trials of one seed only differ in their start policy (and name); everything else is the
    pipeline's, so accuracy differences within a seed come from when pruning started.
    """
    cadence = config.start.snapshot_every
    starts: dict[str, Any] = {fixed_label(e): FixedStart(epoch=e, snapshot_every=cadence) for e in oracle_grid(config)}
    starts.update({kind: policy_of_kind(config.start, kind) for kind in config.oracle.policies})
    untracked = config.tracking.model_copy(update={"mlflow": False})  # the sweep logs its trials itself
    seeds = seeds_of(config)
    trials = {}
    for seed in seeds:
        training = config.training.model_copy(update={"seed": seed})
        for group, start in starts.items():
            label = trial_label(group, seed, seeds)
            trials[label] = config.model_copy(
                update={"name": f"{config.name}-{label}", "start": start, "tracking": untracked, "training": training}
            )
    return trials


@dataclass
class TrialOutcome:
    """One finished (or failed) trial, as the report needs it."""

    label: str
    policy: str  # a StartKind, or a plugin's policy
    start_epoch: float | None  # epochs into training when pruning started (fixed: as set; epi: 2.25 = mid-epoch 3)
    accuracy: float | None = None
    flops_kept: float | None = None
    train_flops: float | None = None
    train_flops_ratio: float | None = None  # against dense training for training.epochs
    wall_seconds: float | None = None  # sum of epoch times: training + evaluation + snapshots
    epochs: int = 0
    epi_curve: list[float | None] = field(default_factory=list)
    error: str | None = None
    group: str = ""  # the label without the seed suffix: grid point or policy
    seed: int | None = None

    def __post_init__(self) -> None:
        self.group = self.group or group_of(self.label)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class HeldOut:
    """EPI on one seed with the tau calibrated on the other seeds (see ``held_out_calibration``)."""

    seed: int
    tau: float
    trigger_epoch: float | None  # epochs into training; None: the rule never fires, the run stays dense
    grid_epoch: float | None  # the grid start whose trial stands in for it (= trigger_epoch when on the grid)
    accuracy: float | None


@dataclass
class OracleSummary:
    """The verdict: EPI against the grid's best start epoch, in accuracy and training cost."""

    name: str
    grid: list[int]
    trials: list[TrialOutcome]
    tau: float | None  # the EPI trial's threshold
    calibration_curves: list[list[float | None]]  # per seed: EPI per snapshot of the longest-watched trial
    calibration_source: str | None
    best_fixed: str | None = None  # the grid group with the best mean accuracy
    reference: str | None = None  # the earliest grid group within one standard error of the best
    calibrated: dict | None = None  # CalibratedTau fields, over every seed's curve
    seeds: list[int] = field(default_factory=lambda: [0])
    epi_window: int | None = None  # r and k of the EPI rule under test
    epi_patience: int | None = None
    snapshots_per_epoch: float = 1.0  # of the calibration curves (1 unless start.snapshot_every < 1 epoch)
    folder: str | None = None  # where the sweep, its report and plots live
    mlflow_run_id: str | None = None  # the sweep's parent run

    def trial(self, label: str) -> TrialOutcome | None:
        return next((t for t in self.trials if t.label == label), None)

    @property
    def fixed(self) -> list[TrialOutcome]:
        return sorted((t for t in self.trials if t.policy == "fixed" and t.ok), key=lambda t: (t.start_epoch, t.seed))

    def groups(self) -> list[GroupStats]:
        return group_stats(self.trials)

    def group(self, name: str | None) -> GroupStats | None:
        return next((g for g in self.groups() if g.group == name), None)

    def fixed_groups(self) -> list[GroupStats]:
        return sorted((g for g in self.groups() if g.policy == "fixed"), key=lambda g: g.mean_start or 0.0)

    def verdict(self) -> Verdict | None:
        """EPI against the reference start (see ``oracle_stats``); None without EPI or a grid."""
        fixed = self.fixed_groups()
        epi, picked = self.group("epi"), best_and_reference(fixed)
        if epi is None or picked is None:
            return None
        return Verdict(
            epi=epi,
            best=picked[0],
            reference=picked[1],
            noise_std=pooled_std(fixed),
            grid_size=len(fixed),
            grid_train_flops=sum(g.mean_train_flops for g in fixed),
            dense=self.group("never"),
            finetune=self.group("after_training"),
        )

    def held_out_calibration(self) -> list[HeldOut]:
        """EPI with a calibrated tau, judged honestly: for each seed, tau is calibrated on the
        *other* seeds' curves, then applied to this seed's curve. Pruning started after epoch
        t is the run the grid's ``fixed-t`` trial of this seed already made (same seed, same
        batches, same snapshots up to t), so its accuracy is read off the grid; when t is not
        a grid epoch, the nearest one stands in (``grid_epoch`` says which)."""
        reference = self.group(self.reference)
        curves, window, patience = self.calibration_curves, self.epi_window, self.epi_patience
        if len(curves) < 2 or reference is None or window is None or patience is None:
            return []
        per_epoch = self.snapshots_per_epoch
        target, held_out = round((reference.mean_start or 0) * per_epoch), []
        for i, seed in enumerate(self.seeds[: len(curves)]):
            calibrated = calibrate_tau_curves(curves[:i] + curves[i + 1 :], window, patience, target)
            if calibrated is None:
                continue
            index = trigger_epoch(curves[i], window, patience, calibrated.tau)
            fired = None if index is None else index / per_epoch
            grid = [t for t in self.fixed if t.seed == seed or (t.seed is None and len(self.seeds) == 1)]
            dense = next((t for t in self.trials if t.policy == "never" and t.ok and t.seed == seed), None)
            stand_in = (
                dense
                if fired is None
                else min(grid, key=lambda t: (abs((t.start_epoch or 0) - fired), t.start_epoch or 0), default=None)
            )
            held_out.append(
                HeldOut(
                    seed=seed,
                    tau=calibrated.tau,
                    trigger_epoch=fired,
                    grid_epoch=stand_in.start_epoch if stand_in is not None else None,
                    accuracy=stand_in.accuracy if stand_in is not None else None,
                )
            )
        return held_out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> OracleSummary:
        """Read back ``to_json``; every field's type is checked (ValueError naming the field)."""
        from pydantic import TypeAdapter, ValidationError

        data = json.loads(text)
        if isinstance(data, dict) and "calibration_curve" in data:  # written before sweeps had seeds
            data["calibration_curves"] = [data.pop("calibration_curve")]
        try:
            return TypeAdapter(cls).validate_python(data, strict=False)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the top level"
            raise ValueError(f"field {where}: {first['msg']} (got {first.get('input')!r:.60})") from None


def outcome_from_result(label: str, result: RunResult) -> TrialOutcome:
    """A finished trial's row, from the run result rebuilt from its final checkpoint."""
    return TrialOutcome(
        label=label,
        policy=result.config.start.kind,
        start_epoch=result.trigger_position if result.trigger_position is not None else result.trigger_epoch,
        accuracy=result.final_accuracy,
        flops_kept=result.flops_kept,
        train_flops=result.train_flops,
        train_flops_ratio=result.train_flops_ratio,
        wall_seconds=result.wall_seconds,
        epochs=len(result.history),
        epi_curve=[point.epi for r in result.history for point in r.snapshots],
        seed=result.config.training.seed,
    )


def summarize(
    name: str,
    config: Config,
    trials: list[TrialOutcome],
    calibration_curves: list[list[float | None]],
    source: str | None,
) -> OracleSummary:
    """Pick the grid's best and reference starts, and calibrate tau on every seed's curve
    (curves count snapshots; the reference start, in epochs, is converted to snapshots)."""
    epi, epochs = epi_policy(config), config.training.epochs
    longest = max((len(curve) for curve in calibration_curves), default=epochs)
    snapshots = config.start.cadence.count(epochs, None) or longest  # an iteration cadence: as the curves say
    window, patience = epi.rule(snapshots)
    per_epoch = snapshots / epochs
    summary = OracleSummary(
        name=name,
        grid=oracle_grid(config),
        trials=trials,
        tau=epi.tau,
        calibration_curves=calibration_curves,
        calibration_source=source,
        seeds=seeds_of(config),
        epi_window=window,
        epi_patience=patience,
        snapshots_per_epoch=per_epoch,
    )
    picked = best_and_reference(summary.fixed_groups())
    if picked is not None:
        best, reference = picked
        summary.best_fixed, summary.reference = best.group, reference.group
        target = round((reference.mean_start or 0) * per_epoch)
        calibrated = calibrate_tau_curves(calibration_curves, window, patience, target)
        if calibrated is not None:
            landing = None if calibrated.epoch is None else calibrated.epoch / per_epoch  # in epochs, as the grid
            summary.calibrated = {**asdict(calibrated), "epoch": landing}
    return summary


def write_summary(folder: Path, summary: OracleSummary) -> Path:
    path = Path(folder) / RESULT_FILE
    atomic_write_text(path, summary.to_json())
    return path


def read_summary(run: str | Path | Location) -> OracleSummary:
    """The summary of a finished sweep, from its folder (or the ``oracle.json`` in it): a path or
    a URI (``file://``, ``s3://``, ...)."""
    where = Location.given(run)
    path = where if where.name == RESULT_FILE or where.is_file() else where / RESULT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run} is not an oracle sweep folder (no {RESULT_FILE} in it)")
    try:
        summary = OracleSummary.from_json(path.read_text())
    except (ValueError, KeyError, TypeError, AttributeError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path}: not a readable oracle summary: {err}") from None
    return summary
