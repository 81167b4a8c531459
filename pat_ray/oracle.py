"""The oracle sweep's plan and verdict, without Ray: which trials to run, and what they showed.

The paper's evidence that EPI picks a good start epoch is a grid search: the same PaT recipe
with pruning started at every candidate epoch, next to the single EPI run. ``trial_configs``
turns one pipeline config into that grid (plus the Early-Bird, dense and
train-prune-fine-tune baselines); ``summarize`` reduces the finished trials to the numbers
the report states. ``pat_ray.ray_tune`` runs the trials.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pat_ray.checkpoint import atomic_write_text
from pat_ray.config import (
    AfterTrainingStart,
    Config,
    EarlyBirdStart,
    EPIStart,
    FixedStart,
    NeverStart,
    oracle_grid,
)
from pat_ray.core.epi import calibrate_tau

if TYPE_CHECKING:
    from pat_ray.engine import RunResult

RESULT_FILE = "oracle.json"


def fixed_label(epoch: int) -> str:
    return f"fixed-{epoch}"


def epi_policy(config: Config) -> EPIStart:
    """The EPI settings under test: the config's own, else the paper's defaults."""
    return config.start if isinstance(config.start, EPIStart) else EPIStart()


def trial_configs(config: Config) -> dict[str, Config]:
    """One config per trial, keyed by its label: ``fixed-<epoch>`` for the grid, then policies.

    Trials only differ in their start policy (and name); everything else, the seed included,
    is the pipeline's, so accuracy differences come from when pruning started.
    """
    starts: dict[str, Any] = {fixed_label(e): FixedStart(epoch=e) for e in oracle_grid(config)}
    baselines = {
        "epi": epi_policy(config),
        "early_bird": config.start if isinstance(config.start, EarlyBirdStart) else EarlyBirdStart(),
        "never": NeverStart(),
        "after_training": config.start if isinstance(config.start, AfterTrainingStart) else AfterTrainingStart(),
    }
    starts.update({policy: baselines[policy] for policy in config.oracle.policies})
    untracked = config.tracking.model_copy(update={"mlflow": False})  # the sweep logs its trials itself
    return {
        label: config.model_copy(update={"name": f"{config.name}-{label}", "start": start, "tracking": untracked})
        for label, start in starts.items()
    }


@dataclass
class TrialOutcome:
    """One finished (or failed) trial, as the report needs it."""

    label: str
    policy: str
    start_epoch: int | None  # the epoch pruning started after (fixed: as set; epi/early_bird: chosen)
    accuracy: float | None = None
    flops_kept: float | None = None
    train_flops: float | None = None
    train_flops_ratio: float | None = None  # against dense training for training.epochs
    wall_seconds: float | None = None  # sum of epoch times: training + evaluation + snapshots
    epochs: int = 0
    epi_curve: list[float | None] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class OracleSummary:
    """The verdict: EPI against the grid's best start epoch, in accuracy and training cost."""

    name: str
    grid: list[int]
    trials: list[TrialOutcome]
    tau: float | None  # the EPI trial's threshold
    calibration_curve: list[float | None]  # EPI per epoch of the longest-watched trial
    calibration_source: str | None
    best_fixed: str | None = None
    calibrated: dict | None = None  # CalibratedTau fields
    folder: str | None = None  # where the sweep, its report and plots live
    mlflow_run_id: str | None = None  # the sweep's parent run

    def trial(self, label: str) -> TrialOutcome | None:
        return next((t for t in self.trials if t.label == label), None)

    @property
    def fixed(self) -> list[TrialOutcome]:
        return sorted((t for t in self.trials if t.policy == "fixed" and t.ok), key=lambda t: t.start_epoch)

    @property
    def grid_train_flops(self) -> float:
        return sum(t.train_flops for t in self.fixed)

    def verdict(self) -> dict[str, float | int | None]:
        """EPI's accuracy gap to the best fixed start and its cost share of the whole grid."""
        epi, best = self.trial("epi"), self.trial(self.best_fixed) if self.best_fixed else None
        if epi is None or not epi.ok or best is None:
            return {}
        return {
            "epi_start_epoch": epi.start_epoch,
            "best_fixed_epoch": best.start_epoch,
            "epi_accuracy": epi.accuracy,
            "best_fixed_accuracy": best.accuracy,
            "accuracy_gap_points": 100 * (epi.accuracy - best.accuracy),
            "epi_cost_share_of_grid": epi.train_flops / self.grid_train_flops,
            "one_over_grid_size": 1 / len(self.fixed),
        }

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> OracleSummary:
        data = json.loads(text)
        data["trials"] = [TrialOutcome(**t) for t in data["trials"]]
        return cls(**data)


def outcome_from_result(label: str, result: RunResult) -> TrialOutcome:
    """A finished trial's row, from the run result rebuilt from its final checkpoint."""
    return TrialOutcome(
        label=label,
        policy=result.config.start.kind,
        start_epoch=result.trigger_epoch,
        accuracy=result.final_accuracy,
        flops_kept=result.flops_kept,
        train_flops=result.train_flops,
        train_flops_ratio=result.train_flops_ratio,
        wall_seconds=result.wall_seconds,
        epochs=len(result.history),
        epi_curve=[h["epi"] for h in result.history if h["phase"] == "dense"],
    )


def summarize(
    name: str, config: Config, trials: list[TrialOutcome], calibration_curve: list[float | None], source: str | None
) -> OracleSummary:
    """Pick the grid's best start (highest accuracy; ties: earliest, i.e. cheapest) and calibrate tau."""
    epi = epi_policy(config)
    summary = OracleSummary(
        name=name,
        grid=oracle_grid(config),
        trials=trials,
        tau=epi.tau,
        calibration_curve=calibration_curve,
        calibration_source=source,
    )
    fixed = summary.fixed
    if fixed:
        best = max(fixed, key=lambda t: (t.accuracy, -t.start_epoch))
        summary.best_fixed = best.label
        calibrated = calibrate_tau(calibration_curve, epi.window, epi.patience, best.start_epoch)
        summary.calibrated = asdict(calibrated) if calibrated else None
    return summary


def write_summary(folder: Path, summary: OracleSummary) -> Path:
    path = Path(folder) / RESULT_FILE
    atomic_write_text(path, summary.to_json())
    return path


def read_summary(run: Path) -> OracleSummary:
    """The summary of a finished sweep, from its folder (or the ``oracle.json`` in it)."""
    run = Path(run)
    path = run / RESULT_FILE if run.is_dir() else run
    if not path.is_file():
        raise FileNotFoundError(f"{run} is not an oracle sweep folder (no {RESULT_FILE} in it)")
    try:
        return OracleSummary.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError, AttributeError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path} is not a readable oracle summary ({type(err).__name__}: {err})") from None
