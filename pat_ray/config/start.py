"""The start policies: when pruning starts (EPI, Early-Bird, a fixed epoch, never, after
training, and any a plugin registers). One class per policy holds its validated fields and
everything the rest of pat_ray asks of it (its decision, the snapshots it needs, the extra
epochs it adds, its checks against the schedule, its trial in the oracle), so the engine, the
oracle's plan, resume checks and tracking ask the policy, never its class. The config's
``start`` is chosen by ``kind`` among the built-ins and the registered ones
(``start_policy_classes``)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol, cast, get_args

from pydantic import BeforeValidator, Field, SerializeAsAny, ValidationError, ValidationInfo, field_validator

from pat_ray.config.fields import SimilarityName, Strict
from pat_ray.core.epi import early_bird_trigger, should_trigger

DEFAULT_WINDOW = 5  # snapshots kept for the EPI curve when the policy itself needs none
PAPER_SCHEDULE_EPOCHS = 90  # the paper's r = k = 5 are snapshots of a 90-epoch schedule, one per epoch
_ITERATIONS = re.compile(r"^\s*(\d+)\s*(it|its|iter|iters|iteration|iterations)\s*$")
_EPOCHS = re.compile(r"^\s*([0-9.]+)\s*(epoch|epochs)?\s*$")


@dataclass(frozen=True)
class Cadence:
    """When the architecture snapshot (and its EPI) is taken: ``per_epoch`` evenly spaced
    snapshots in every epoch (the last at its end), or one every ``iterations`` iterations."""

    per_epoch: int | None = 1
    iterations: int | None = None

    def due(self, step: int, iteration: int, iters_per_epoch: int) -> bool:
        """After ``step`` (1-based within the epoch; ``iteration`` counted over the run)."""
        if self.iterations is not None:
            return iteration % self.iterations == 0
        n = self.per_epoch or 1
        return any(step == math.ceil(j * iters_per_epoch / n) for j in range(1, n + 1))

    def count(self, epochs: int, iters_per_epoch: int | None) -> int | None:
        """Snapshots taken over ``epochs`` epochs (None: it depends on an unknown epoch length)."""
        if self.iterations is not None:
            return None if iters_per_epoch is None else epochs * iters_per_epoch // self.iterations
        per_epoch = self.per_epoch or 1
        return epochs * (per_epoch if iters_per_epoch is None else min(per_epoch, iters_per_epoch))


def parse_cadence(value: float | str) -> Cadence:
    """``1`` / ``0.5`` / ``"0.25 epoch"``: 1/n of an epoch; ``"50 iterations"``: every 50 iterations."""
    text = str(value)
    if match := _ITERATIONS.match(text):
        if int(match.group(1)) < 1:
            raise ValueError("snapshot_every in iterations must be >= 1")
        return Cadence(per_epoch=None, iterations=int(match.group(1)))
    match = _EPOCHS.match(text)
    fraction = float(match.group(1)) if match else None
    per_epoch = round(1 / fraction) if fraction else None
    if fraction is None or per_epoch is None or not 0 < fraction <= 1 or abs(per_epoch * fraction - 1) > 1e-9:
        raise ValueError(
            f"snapshot_every must be 1/n of an epoch (1, 0.5, 0.25, 0.2, 0.1, ...; a number or '0.25 epoch') "
            f"or '<N> iterations'; got {value!r}"
        )
    return Cadence(per_epoch=per_epoch)


def paper_scaled(snapshots: int) -> int:
    """The paper's r = k = 5 (of 90 one-per-epoch snapshots) scaled to a schedule's snapshots."""
    return max(1, round(5 * snapshots / PAPER_SCHEDULE_EPOCHS))


class Watched(Protocol):
    """What the snapshot tracker has seen so far: EPI per snapshot, Early-Bird mask distances,
    and how many snapshots the whole training schedule takes."""

    epi: list[float | None]
    mask_distances: list[list[float]]
    schedule_snapshots: int


class BaseStartPolicy(Strict):
    """The questions every start policy answers (defaults: a policy that watches nothing)."""

    kind: str
    snapshot_every: float | str = Field(
        1.0,
        description="how often the architecture snapshot and its EPI are taken: 1/n of an epoch (1, 0.5, "
        "0.25, ...) or '<N> iterations'; window and patience count snapshots, and pruning can start after "
        "any snapshot",
    )

    @field_validator("snapshot_every")
    @classmethod
    def _cadence_is_readable(cls, value: float | str) -> float | str:
        parse_cadence(value)
        return value

    @property
    def cadence(self) -> Cadence:
        return parse_cadence(self.snapshot_every)

    def decide(self, position: float, train_epochs: int, watched: Watched) -> bool:
        """Whether pruning starts now, ``position`` epochs into training (2.0: after epoch 2;
        2.25: a quarter into epoch 3; 0: before training), after the snapshot just recorded."""
        raise NotImplementedError

    def snapshot_window(self, snapshots: int) -> int:
        """Previous snapshots the tracker keeps each new one's EPI against, in a schedule of
        ``snapshots`` snapshots."""
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

    def schedule_problem(self, epochs: int, snapshots: int | None) -> str | None:
        """Why this policy cannot act within ``epochs`` epochs of ``snapshots`` snapshots (None:
        not known before the data is), or None."""
        return None

    def latest_epoch(self, auto: int) -> int | None:
        """The epoch by whose end pruning starts although ``decide`` has not said so (None: this
        policy needs no such limit); ``auto`` is the latest that leaves the pruning steps and a
        quarter of the schedule to train the pruned model."""
        return None

    @property
    def label(self) -> str:
        """The policy as the run's summary names it (``EPI fired at epoch 4``)."""
        return self.kind


class WatchingStartPolicy(BaseStartPolicy):
    """A policy that decides from what the snapshots show (EPI, Early-Bird, a plugin's). What it
    watches may never settle, so it has a latest start: a run always reaches its budget with
    training left for the pruned model."""

    latest_start: int | Literal["auto"] = Field(
        "auto",
        description="the epoch by whose end pruning starts if the policy has not fired by then; auto: the latest "
        "that leaves the pruning steps and a quarter of training.epochs (at least one epoch) to train the pruned "
        "model",
    )

    @field_validator("latest_start")
    @classmethod
    def _not_negative(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError("must be >= 0 or 'auto'")
        return value

    def latest_epoch(self, auto: int) -> int | None:
        return auto if self.latest_start == "auto" else self.latest_start

    def first_chance(self, snapshots: int) -> int:
        """How many snapshots must exist before ``decide`` can say yes."""
        return self.snapshot_window(snapshots) + 1


StartKind = Literal["epi", "early_bird", "fixed", "never", "after_training"]  # the start policies' `kind`s
OraclePolicy = Literal["epi", "early_bird", "never", "after_training"]  # those an oracle trial runs once
ORACLE_POLICIES: tuple[OraclePolicy, ...] = ("epi", "early_bird", "never", "after_training")


class EPIStart(WatchingStartPolicy):
    kind: Literal["epi"] = Field("epi", description="the start policy; each kind has its own keys")
    similarity: SimilarityName = Field(
        "structural", description="how two architecture snapshots are compared (or a plugin's metric)"
    )
    window: int | Literal["scaled"] = Field(
        5,
        description="r: previous snapshots EPI averages over; 'scaled': the paper's 5 of 90 one-per-epoch "
        "snapshots, scaled to this schedule's snapshots",
    )
    patience: int | Literal["scaled"] = Field(
        5, description="k: EPI must exceed its k previous values; 'scaled' as for window"
    )
    tau: float = Field(0.983, ge=0, le=1, description="threshold; calibrate per model/data with `pat-ray oracle`")

    @field_validator("window", "patience")
    @classmethod
    def _counts_are_positive(cls, value: int | str, info: ValidationInfo) -> int | str:
        if isinstance(value, int) and value < (1 if info.field_name == "window" else 0):
            raise ValueError(f"must be >= {1 if info.field_name == 'window' else 0} or 'scaled'")
        return value

    def rule(self, snapshots: int) -> tuple[int, int]:
        """(r, k) in a schedule of ``snapshots`` snapshots."""
        scaled = paper_scaled(snapshots)
        return (scaled if self.window == "scaled" else self.window), (
            scaled if self.patience == "scaled" else self.patience
        )

    def decide(self, position: float, train_epochs: int, watched: Watched) -> bool:
        window, patience = self.rule(watched.schedule_snapshots)
        return position > 0 and should_trigger(watched.epi, window, patience, self.tau)

    def snapshot_window(self, snapshots: int) -> int:
        return self.rule(snapshots)[0]

    @property
    def similarity_metric(self) -> str:
        return self.similarity

    @property
    def threshold(self) -> float | None:
        return self.tau

    @property
    def label(self) -> str:
        return "EPI"


class EarlyBirdStart(WatchingStartPolicy):
    kind: Literal["early_bird"] = "early_bird"
    window: int = Field(5, ge=1, description="Early-Bird: previous masks each new one is compared with")
    epsilon: float = Field(0.1, gt=0, le=1, description="Early-Bird: starts when mask distances stay below this")

    def decide(self, position: float, train_epochs: int, watched: Watched) -> bool:
        distances = watched.mask_distances[-1] if watched.mask_distances else []
        return position > 0 and early_bird_trigger(distances, self.window, self.epsilon)

    def snapshot_window(self, snapshots: int) -> int:
        return self.window

    @property
    def label(self) -> str:
        return "Early-Bird"


class FixedStart(BaseStartPolicy):
    kind: Literal["fixed"] = "fixed"
    epoch: int = Field(ge=0, description="dense epochs before pruning starts (0 = prune at init)")

    def decide(self, position: float, train_epochs: int, watched: Watched) -> bool:
        return position >= self.epoch

    @property
    def grid_epoch(self) -> int | None:
        return self.epoch

    @property
    def label(self) -> str:
        return "fixed start"

    def schedule_problem(self, epochs: int, snapshots: int | None) -> str | None:
        return f"start.epoch ({self.epoch}) must be < training.epochs ({epochs})" if self.epoch >= epochs else None


class NeverStart(BaseStartPolicy):
    kind: Literal["never"] = "never"

    @property
    def label(self) -> str:
        return "dense baseline"

    def decide(self, position: float, train_epochs: int, watched: Watched) -> bool:
        return False


class AfterTrainingStart(BaseStartPolicy):
    kind: Literal["after_training"] = "after_training"
    finetune_epochs: int | None = Field(
        None, ge=1, description="default: training.epochs (the conventional ~2x pipeline)"
    )
    finetune_lr_scale: float = Field(0.1, gt=0, description="fine-tune lr = training lr * this")

    def decide(self, position: float, train_epochs: int, watched: Watched) -> bool:
        return position >= train_epochs

    def extra_epochs(self, train_epochs: int) -> int:
        return self.finetune_epochs or train_epochs

    def extra_lr(self, lr: float) -> float:
        return lr * self.finetune_lr_scale

    @property
    def label(self) -> str:
        return "train-prune-fine-tune"


POLICIES: dict[str, type[BaseStartPolicy]] = {  # the built-in ones
    policy.model_fields["kind"].default: policy
    for policy in (EPIStart, EarlyBirdStart, FixedStart, NeverStart, AfterTrainingStart)
}


def start_policy_classes() -> dict[str, type[BaseStartPolicy]]:
    """Every start policy by ``kind``: the built-ins, then those plugins registered with
    ``pat_ray_register_start_policies``."""
    from pat_ray.errors import PluginError
    from pat_ray.plugins.registry import get_registry

    registry = get_registry()
    plugins: dict[str, type[BaseStartPolicy]] = {}
    for name in registry.names("start_policy"):
        entry = registry.get("start_policy", name)
        problem = check_policy_class(name, entry.factory)
        if problem:
            raise PluginError(f"start policy {name!r} from plugin {entry.plugin!r} ({entry.distribution}): {problem}")
        plugins[name] = cast(type[BaseStartPolicy], entry.factory)
    return {**POLICIES, **plugins}


def oracle_kinds() -> list[str]:
    """The policies an oracle sweep may run once per seed: all but the grid's ``fixed``."""
    return [kind for kind in start_policy_classes() if kind != "fixed"]


def start_policy_of(value: Any) -> BaseStartPolicy:
    """The ``start`` section as its kind's class; errors name ``start.<kind>.<field>``."""
    if isinstance(value, BaseStartPolicy):
        return value
    if not isinstance(value, dict) or "kind" not in value:
        raise ValueError("needs a 'kind' (a mapping such as {kind: epi, tau: 0.97})")
    classes = start_policy_classes()
    kind = value["kind"]
    if kind not in classes:
        raise ValueError(f"Input tag {kind!r} found using 'kind' does not match any of: {', '.join(classes)}")
    try:
        return classes[kind].model_validate(value)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            where = ".".join(str(part) for part in ("start", kind, *e["loc"]))
            problems.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
        raise ValueError("\n".join(problems)) from None


def as_start_policy(start: str | Mapping[str, Any] | BaseStartPolicy) -> BaseStartPolicy:
    """A start policy from its kind (``"epi"``: its defaults), a mapping such as ``{"kind":
    "fixed", "epoch": 2}``, or a policy object; ValueError naming each field that is wrong."""
    if isinstance(start, BaseStartPolicy):
        return start
    return start_policy_of({"kind": start} if isinstance(start, str) else dict(start))


def policy_of_kind(own: BaseStartPolicy, kind: str) -> BaseStartPolicy:
    """The policy ``kind`` with the pipeline's own settings when it is that kind, else the
    policy's defaults at the pipeline's snapshot cadence (how the oracle builds its
    once-per-seed trials: every trial's EPI curve then counts the same snapshots)."""
    if own.kind == kind:
        return own
    return start_policy_classes()[kind].model_validate({"kind": kind, "snapshot_every": own.snapshot_every})


def check_policy_class(name: str, cls: object) -> str | None:
    """Why ``cls`` cannot be the start policy registered as ``name`` (None: it can)."""
    if not (isinstance(cls, type) and issubclass(cls, BaseStartPolicy)):
        return f"register a subclass of pat_ray.sdk.StartPolicy, not {cls!r}"
    field = cls.model_fields.get("kind")
    if field is None or get_args(field.annotation) != (name,) or field.default != name:
        return f"its `kind` field must be `kind: Literal[{name!r}] = {name!r}`"
    if name in POLICIES:
        return f"{name!r} is a built-in start policy"
    return None


# The config's ``start``: any policy class, chosen by ``kind`` when the config is validated, and
# dumped with its own class's fields.
StartPolicy = Annotated[SerializeAsAny[BaseStartPolicy], BeforeValidator(start_policy_of)]
BuiltinStartPolicy = EPIStart | EarlyBirdStart | FixedStart | NeverStart | AfterTrainingStart
