"""The start policies: when pruning starts (EPI, Early-Bird, a fixed epoch, never, after
training). One class per policy holds its validated fields and everything the rest of pat_ray
asks of it (its decision, the snapshots it needs, the extra epochs it adds, its checks against
the schedule, its trial in the oracle), so the engine, the oracle's plan, resume checks and
tracking ask the policy, never its class. The config's ``start`` is a union on ``kind``."""

from __future__ import annotations

from typing import Annotated, Literal, Protocol

from pydantic import Field

from pat_ray.config_fields import SimilarityName, Strict
from pat_ray.core.epi import early_bird_trigger, should_trigger

DEFAULT_WINDOW = 5  # snapshots kept for the EPI curve when the policy itself needs none


class Watched(Protocol):
    """What the snapshot tracker has seen so far: EPI per snapshot, Early-Bird mask distances."""

    epi: list[float | None]
    mask_distances: list[list[float]]


class BaseStartPolicy(Strict):
    """The questions every start policy answers (defaults: a policy that watches nothing)."""

    kind: str

    def decide(self, epoch: int, train_epochs: int, watched: Watched) -> bool:
        """Whether pruning starts after ``epoch`` (1-based, just completed; 0 = before training)."""
        raise NotImplementedError

    @property
    def snapshot_window(self) -> int:
        """Previous snapshots the tracker keeps each new one's EPI against."""
        return DEFAULT_WINDOW

    @property
    def similarity_metric(self) -> str:
        return "structural"

    @property
    def threshold(self) -> float | None:
        """The EPI threshold this policy fires at, drawn on the EPI plot (EPI only)."""
        return None

    @property
    def grid_epoch(self) -> int | None:
        """The start epoch when it is fixed in advance (the oracle's grid points)."""
        return None

    def extra_epochs(self, train_epochs: int) -> int:
        """Epochs this policy adds after ``training.epochs`` (fine-tuning after pruning)."""
        return 0

    def extra_lr(self, lr: float) -> float:
        """The peak learning rate of the extra epochs, from the training's."""
        return lr

    def schedule_problem(self, epochs: int) -> str | None:
        """Why this policy cannot act within ``epochs`` epochs, or None."""
        return None


StartKind = Literal["epi", "early_bird", "fixed", "never", "after_training"]  # the start policies' `kind`s
OraclePolicy = Literal["epi", "early_bird", "never", "after_training"]  # those an oracle trial runs once
ORACLE_POLICIES: tuple[OraclePolicy, ...] = ("epi", "early_bird", "never", "after_training")


class EPIStart(BaseStartPolicy):
    kind: Literal["epi"] = Field("epi", description="the start policy; each kind has its own keys")
    similarity: SimilarityName = Field(
        "structural", description="how two architecture snapshots are compared (or a plugin's metric)"
    )
    window: int = Field(5, ge=1, description="r: previous snapshots EPI averages over")
    patience: int = Field(5, ge=0, description="k: EPI must exceed its k previous values")
    tau: float = Field(0.983, ge=0, le=1, description="threshold; calibrate per model/data with `pat-ray oracle`")

    def decide(self, epoch: int, train_epochs: int, watched: Watched) -> bool:
        return epoch > 0 and should_trigger(watched.epi, self.window, self.patience, self.tau)

    @property
    def snapshot_window(self) -> int:
        return self.window

    @property
    def similarity_metric(self) -> str:
        return self.similarity

    @property
    def threshold(self) -> float | None:
        return self.tau

    def schedule_problem(self, epochs: int) -> str | None:
        return _window_problem(self.window, epochs)


class EarlyBirdStart(BaseStartPolicy):
    kind: Literal["early_bird"] = "early_bird"
    window: int = Field(5, ge=1, description="Early-Bird: previous masks each new one is compared with")
    epsilon: float = Field(0.1, gt=0, le=1, description="Early-Bird: starts when mask distances stay below this")

    def decide(self, epoch: int, train_epochs: int, watched: Watched) -> bool:
        return epoch > 0 and early_bird_trigger(watched.mask_distances[-1], self.window, self.epsilon)

    @property
    def snapshot_window(self) -> int:
        return self.window

    def schedule_problem(self, epochs: int) -> str | None:
        return _window_problem(self.window, epochs)


class FixedStart(BaseStartPolicy):
    kind: Literal["fixed"] = "fixed"
    epoch: int = Field(ge=0, description="dense epochs before pruning starts (0 = prune at init)")

    def decide(self, epoch: int, train_epochs: int, watched: Watched) -> bool:
        return epoch >= self.epoch

    @property
    def grid_epoch(self) -> int | None:
        return self.epoch

    def schedule_problem(self, epochs: int) -> str | None:
        return f"start.epoch ({self.epoch}) must be < training.epochs ({epochs})" if self.epoch >= epochs else None


class NeverStart(BaseStartPolicy):
    kind: Literal["never"] = "never"

    def decide(self, epoch: int, train_epochs: int, watched: Watched) -> bool:
        return False


class AfterTrainingStart(BaseStartPolicy):
    kind: Literal["after_training"] = "after_training"
    finetune_epochs: int | None = Field(
        None, ge=1, description="default: training.epochs (the conventional ~2x pipeline)"
    )
    finetune_lr_scale: float = Field(0.1, gt=0, description="fine-tune lr = training lr * this")

    def decide(self, epoch: int, train_epochs: int, watched: Watched) -> bool:
        return epoch >= train_epochs

    def extra_epochs(self, train_epochs: int) -> int:
        return self.finetune_epochs or train_epochs

    def extra_lr(self, lr: float) -> float:
        return lr * self.finetune_lr_scale


POLICIES: dict[str, type[BaseStartPolicy]] = {
    policy.model_fields["kind"].default: policy
    for policy in (EPIStart, EarlyBirdStart, FixedStart, NeverStart, AfterTrainingStart)
}


def policy_of_kind(own: BaseStartPolicy, kind: str) -> BaseStartPolicy:
    """The policy ``kind`` with the pipeline's own settings when it is that kind, else the
    policy's defaults (how the oracle builds its once-per-seed trials)."""
    return own if own.kind == kind else POLICIES[kind].model_validate({"kind": kind})


def _window_problem(window: int, epochs: int) -> str | None:
    return f"start.window ({window}) leaves no epoch to trigger in {epochs} epochs" if window >= epochs else None


StartPolicy = Annotated[
    EPIStart | EarlyBirdStart | FixedStart | NeverStart | AfterTrainingStart,
    Field(discriminator="kind"),
]
