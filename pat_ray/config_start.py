"""The start policies' config sections: when pruning starts (EPI, Early-Bird, a fixed epoch,
never, after training). One class per policy, a discriminated union on ``kind``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from pat_ray.config_fields import SimilarityName, Strict

StartKind = Literal["epi", "early_bird", "fixed", "never", "after_training"]  # the start policies' `kind`s
OraclePolicy = Literal["epi", "early_bird", "never", "after_training"]  # those an oracle trial runs once
ORACLE_POLICIES: tuple[OraclePolicy, ...] = ("epi", "early_bird", "never", "after_training")


class EPIStart(Strict):
    kind: Literal["epi"] = Field("epi", description="the start policy; each kind has its own keys")
    similarity: SimilarityName = Field(
        "structural", description="how two architecture snapshots are compared (or a plugin's metric)"
    )
    window: int = Field(5, ge=1, description="r: previous snapshots EPI averages over")
    patience: int = Field(5, ge=0, description="k: EPI must exceed its k previous values")
    tau: float = Field(0.983, ge=0, le=1, description="threshold; calibrate per model/data with `pat-ray oracle`")


class EarlyBirdStart(Strict):
    kind: Literal["early_bird"] = "early_bird"
    window: int = Field(5, ge=1)
    epsilon: float = Field(0.1, gt=0, le=1, description="Early-Bird: starts when mask distances stay below this")


class FixedStart(Strict):
    kind: Literal["fixed"] = "fixed"
    epoch: int = Field(ge=0, description="dense epochs before pruning starts (0 = prune at init)")


class NeverStart(Strict):
    kind: Literal["never"] = "never"


class AfterTrainingStart(Strict):
    kind: Literal["after_training"] = "after_training"
    finetune_epochs: int | None = Field(
        None, ge=1, description="default: training.epochs (the conventional ~2x pipeline)"
    )
    finetune_lr_scale: float = Field(0.1, gt=0, description="fine-tune lr = training lr * this")


StartPolicy = Annotated[
    EPIStart | EarlyBirdStart | FixedStart | NeverStart | AfterTrainingStart,
    Field(discriminator="kind"),
]
