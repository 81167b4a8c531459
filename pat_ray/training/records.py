"""The records a run hands to other modules: one epoch's metrics, the state a checkpoint
carries to continue the run, and the run's result.

Typed here, in one place, so that the engine, the Ray shells, the oracle, tracking and the
CLI read the same fields by name. On disk (inside ``last.pt``, read with
``weights_only=True``) they are plain dicts: ``to_dict`` / ``from_dict`` are the only
conversion.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from pat_ray.config import Config
from pat_ray.core.kinds import BUDGET_TOLERANCE

Phase = Literal["dense", "pruning", "pruned", "finetune"]
StartedBy = Literal["policy", "latest_start"]  # what started pruning: the start policy, or its latest start


@dataclass
class SnapshotPoint:
    """One architecture snapshot: where in training it was taken (epochs, 2.25 = a quarter
    into epoch 3) and its EPI (None: nothing yet to compare it with)."""

    position: float
    epi: float | None


@dataclass
class EpochRecord:
    """What one epoch measured, as reporters, MLflow and ``history.json`` see it."""

    epoch: int
    phase: Phase
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    epi: float | None  # None: no snapshot this epoch, or nothing yet to compare it with
    snapshot_counts: list[int] | None  # channels the budget would keep per group (A_t)
    flops: int  # per sample, of the model as it is at the end of the epoch
    params: int
    flops_kept: float
    time_kept: float | None  # latency budgets: predicted step time over the dense model's
    lr: float
    epoch_seconds: float
    setup_seconds: float  # this process's setup, on the first epoch it runs (a resumed run has two)
    snapshot_seconds: float
    train_flops: float  # cumulative training FLOPs up to the end of this epoch
    triggered: bool  # pruning started in this epoch (after one of its snapshots, or at its end)
    fingerprint: str  # of the architecture in effect
    snapshots: list[SnapshotPoint] = field(default_factory=list)  # taken in this epoch, in order
    trigger_position: float | None = None  # triggered: where, in epochs (1.75: three quarters into epoch 2)
    budget_kept: float | None = None  # the budget's measure kept (flops, params, channels or step time); None: older

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochRecord:
        """Records written before snapshots within epochs had one per epoch, at its end."""
        optional = ("snapshots", "trigger_position", "budget_kept")
        values = {f.name: data[f.name] for f in fields(cls) if f.name not in optional}
        values["budget_kept"] = data.get("budget_kept")
        values["trigger_position"] = data.get("trigger_position", float(data["epoch"]) if data["triggered"] else None)
        listed = data.get("snapshots")
        if listed is None:
            listed = [] if data["snapshot_counts"] is None else [{"position": float(data["epoch"]), "epi": data["epi"]}]
        return cls(**values, snapshots=[SnapshotPoint(**point) for point in listed])


@dataclass
class RunResult:
    """Everything a run measured. ``wall_seconds`` is the whole run, setup included."""

    config: Config
    history: list[EpochRecord]
    trigger_epoch: int | None
    final_accuracy: float
    dense_flops: int
    final_flops: int
    train_flops: float
    dense_train_flops: float
    wall_seconds: float
    architecture: dict = field(repr=False)
    checkpoint: Path | str | None = None  # a local file, or the URI of one in a store
    mlflow_run_id: str | None = None
    trigger_position: float | None = None  # where pruning started, in epochs (2.25: a quarter into epoch 3)
    started_by: StartedBy | None = None  # the start policy, or its latest start

    @property
    def flops_kept(self) -> float:
        return self.final_flops / self.dense_flops

    def trigger_text(self) -> str:
        """Where pruning started, as a person reads it: ``epoch 2``, or ``epoch 1.75 (within epoch 2)``."""
        return describe_trigger(self.trigger_epoch, self.trigger_position)

    def start_text(self) -> str:
        """How pruning started, as the summary says it: ``EPI fired at epoch 4``, ``EPI did not
        fire by epoch 12: pruning started there``, ``fixed start at epoch 2``, ``never (dense baseline)``."""
        policy = self.config.start
        where = self.trigger_text()
        if self.trigger_epoch is None:
            return "never (dense baseline)" if policy.kind == "never" else f"never: {policy.label} did not fire"
        if self.started_by == "latest_start":
            return f"{policy.label} did not fire by {where}: pruning started there (start.latest_start)"
        if policy.kind in ("fixed", "after_training"):
            return f"{policy.label} at {where}"
        return f"{policy.label} fired at {where}"

    @property
    def budget_share(self) -> float | None:
        """The share of the budget's measure the final model keeps (None: a run recorded before it was)."""
        return self.history[-1].budget_kept if self.history else None

    @property
    def at_budget(self) -> bool:
        """Whether the run ended where its budget asked, within ``BUDGET_TOLERANCE`` (a dense
        baseline, which prunes nothing by design, counts as at its budget)."""
        if self.config.start.kind == "never":
            return True
        kept = self.budget_share if self.budget_share is not None else self.flops_kept
        return self.trigger_epoch is not None and kept <= self.config.pruning.budget.fraction + BUDGET_TOLERANCE

    def status(self) -> Literal["finished", "off_budget"]:
        """``finished`` only at the budget: a run that ended above it says so."""
        return "finished" if self.at_budget else "off_budget"

    def summary(self) -> dict[str, Any]:
        """The headline numbers, as plain data (``status.json``, ``pat-ray runs``)."""
        return {
            "trigger_epoch": self.trigger_epoch,
            "trigger_position": self.trigger_position,
            "started_by": self.started_by,
            "budget_kept": self.budget_share,
            "final_accuracy": self.final_accuracy,
            "flops_kept": self.flops_kept,
            "train_flops_ratio": self.train_flops_ratio,
            "wall_seconds": self.wall_seconds,
            "mlflow_run_id": self.mlflow_run_id,
        }

    @property
    def train_flops_ratio(self) -> float:
        """Training FLOPs spent relative to training the dense model for the same epochs."""
        return self.train_flops / self.dense_train_flops


def describe_trigger(epoch: int | None, position: float | None) -> str:
    """``never``, ``epoch 2`` (at its end), or ``epoch 1.75 (within epoch 2)``."""
    if epoch is None:
        return "never"
    if position is None or position == int(position):
        return f"epoch {epoch}"
    return f"epoch {position:.2f} (within epoch {epoch})"
