"""The sections of a pipeline config, one pydantic model each (``model``, ``data``, ``training``,
``pruning``, ``scaling``, ``tracking``, ``oracle``; ``start`` is in ``start``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pat_ray.config.fields import (
    CriterionName,
    DatasetName,
    ModelName,
    Strict,
    SurgeryName,
    check_data_here,
    expand_path,
)
from pat_ray.config.start import ORACLE_POLICIES, oracle_kinds
from pat_ray.core.cost.latency import LatencyTable
from pat_ray.core.kinds import AttentionCut, Measure

DEFAULT_MODEL, DEFAULT_DATA = "cifar_resnet20", "digits"


class ModelConfig(Strict):
    name: ModelName | None = Field(
        None, description="registered model name (`pat-ray plugins --kind model`); default cifar_resnet20"
    )
    target: str | None = Field(
        None,
        description="your own model instead of a registered one: an import path, module:Class or module:function "
        "(e.g. my_pkg.nets:SmallCNN), imported only from modules you trust (--trust my_pkg)",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments for the model's class or factory; num_classes, in_channels and (square "
        "images) image_size come from the data when it takes them and they are not given",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if self.name is not None and self.target is not None:
            raise ValueError(f"give name ({self.name!r}) or target ({self.target!r}), not both")
        if self.name is None and self.target is None:
            object.__setattr__(self, "name", DEFAULT_MODEL)
        return self


class DataConfig(Strict):
    name: DatasetName | None = Field(None, description="registered dataset name; default digits")
    target: str | None = Field(
        None,
        description="your own data instead of a registered dataset: an import path (module:function) to a factory "
        "returning a DataBundle or a (train, val) pair of datasets; imported only from modules you trust",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments for the dataset factory (e.g. root)"
    )
    num_classes: int | None = Field(
        None, gt=1, description="classes, when the data cannot say (default: read from the datasets)"
    )
    input_shape: list[int] | None = Field(
        None, description="one sample's shape, e.g. [3, 32, 32], when the data cannot say (default: its first sample)"
    )
    batch_size: int = Field(64, gt=0, description="training batch size per worker")
    eval_batch_size: int = Field(512, gt=0, description="validation batch size per worker")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.name is not None and self.target is not None:
            raise ValueError(f"give name ({self.name!r}) or target ({self.target!r}), not both")
        if self.name is None and self.target is None:
            object.__setattr__(self, "name", DEFAULT_DATA)
        return self

    @field_validator("params")
    @classmethod
    def _root_exists(cls, v: dict[str, Any]) -> dict[str, Any]:
        root = v.get("root")
        if root is None:
            return v
        path = expand_path(root, "data root")
        if not path.exists():
            check_data_here(
                "data.params", f"data root {str(root)!r} does not exist" + (f" ({path})" if str(path) != root else "")
            )
        return {**v, "root": str(path)}


class OptimizerConfig(Strict):
    name: Literal["sgd", "adamw"] = Field("sgd", description="optimizer: SGD with momentum, or AdamW")
    lr: float = Field(0.1, gt=0, description="peak learning rate, reached after the warm-up")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (AdamW: beta1)")
    weight_decay: float = Field(5e-4, ge=0, description="L2 weight decay")
    nesterov: bool = Field(False, description="SGD: Nesterov momentum")


class ScheduleConfig(Strict):
    kind: Literal["cosine", "step", "constant"] = Field(
        "cosine", description="learning-rate schedule over the whole run, pruned epochs included"
    )
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up from 0, in epochs")
    step_epochs: list[int] = Field(default_factory=list, description="`step`: epochs at which lr *= gamma")
    gamma: float = Field(0.1, gt=0, description="`step`: the factor applied at each of step_epochs")


class TrainingConfig(Strict):
    epochs: int = Field(30, gt=0, description="epochs of the whole run: dense, then pruned once pruning starts")
    optimizer: OptimizerConfig = Field(OptimizerConfig(), description="the optimizer and its hyperparameters")
    schedule: ScheduleConfig = Field(ScheduleConfig(), description="the learning-rate schedule")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="bf16/fp16 use autocast; fp16 needs CUDA")
    channels_last: bool = Field(
        False, description="NHWC memory format for model and images (faster convs on GPUs and oneDNN CPUs)"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    seed: int = Field(0, description="seeds the weights and each epoch's batch order (a run is reproducible)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when there is a GPU, else CPU")
    checkpoint_every: int = Field(
        1,
        ge=1,
        description="epochs between checkpoints; the trigger epoch, pruning epochs and the last epoch are always "
        "saved (a resumed run repeats the epochs since its last checkpoint)",
    )

    @model_validator(mode="after")
    def _fits(self) -> TrainingConfig:
        if self.schedule.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.schedule.warmup_epochs}) must be < epochs ({self.epochs})")
        late = [e for e in self.schedule.step_epochs if not 0 < e < self.epochs]
        if late:
            raise ValueError(f"schedule.step_epochs {late} fall outside the {self.epochs} training epochs")
        return self


class CriterionConfig(Strict):
    name: CriterionName = Field(
        "magnitude", description="importance criterion: magnitude, bn_scale, taylor or a plugin's (`pat-ray plugins`)"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="the criterion's own arguments, e.g. {p: 1}")


class BudgetConfig(Strict):
    fraction: float = Field(0.5, description="fraction of `measure` to keep, in (0, 1]")
    measure: Measure = Field(
        "flops",
        description="flops / params / channels: counted; latency: the training step's time on this run's device, "
        "predicted from per-layer timings measured when the run starts",
    )
    round_to: int = Field(1, ge=1, description="kept channels per group: multiples of this (8 or 16 suit most kernels)")
    latency_grid: int = Field(
        6, ge=2, le=64, description="latency: channel counts timed per layer and axis (more: slower start, closer fit)"
    )
    latency_table: Path | None = Field(
        None, description="latency: an earlier run's latency_table.json (same device and batch) instead of timing"
    )

    @field_validator("fraction")
    @classmethod
    def _in_range(cls, v: float) -> float:
        if not (0.0 < v <= 1.0) or math.isnan(v):
            raise ValueError(f"must be in (0, 1], got {v}")
        return v

    @field_validator("latency_table", mode="before")
    @classmethod
    def _readable_table(cls, v: Any) -> Any:
        if v is None:
            return v
        path = expand_path(v, "latency_table")
        try:
            LatencyTable.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ValueError(f"{str(v)!r} does not exist") from None
        except (json.JSONDecodeError, ValueError) as err:
            raise ValueError(f"{str(v)!r} is not a latency table: {err}") from None
        return path

    @model_validator(mode="after")
    def _table_needs_latency(self) -> BudgetConfig:
        if self.latency_table is not None and self.measure != "latency":
            raise ValueError(f"latency_table is only used with measure: latency (measure is {self.measure})")
        return self


class PruningConfig(Strict):
    criterion: CriterionConfig = Field(CriterionConfig(), description="how channels are ranked")
    budget: BudgetConfig = Field(BudgetConfig(), description="how much of the dense model is kept")
    steps: int = Field(3, ge=1, description="pruning steps after the trigger, each removing an equal share")
    interval: int = Field(10, ge=1, description="training iterations between pruning steps")
    backend: SurgeryName = Field("native", description="surgery backend that removes the channels (or a plugin's)")
    exclude: list[str] = Field(default_factory=list, description="module names never pruned")
    attention: AttentionCut = Field(
        "heads",
        description="what pruning removes from attention cut into heads: whole `heads`, or `head_dim` (the same "
        "features of every head: q and k together, v with the out projection; heads then stay); see docs/attention.md",
    )


class ScalingConfig(Strict):
    num_workers: int = Field(1, ge=1, description="Ray workers: 1 runs as one Ray task, more on Ray Train (DDP)")
    use_gpu: bool = Field(False, description="one GPU per worker, NCCL for DDP")
    max_failures: int = Field(
        1, ge=-1, description="restarts of the workers (one: its task) from the last checkpoint (-1: forever)"
    )
    cpus_per_worker: int | None = Field(
        None,
        ge=1,
        description="CPU cores (and torch threads) per Ray worker; default: on a one-node Ray, its cores "
        "shared among the workers (one worker trains like --local), else 1",
    )
    resource_wait_s: float = Field(
        300,
        gt=0,
        description="how long a Ray run waits for its workers' CPUs/GPUs (at the start, or after a node is lost "
        "and Ray restarts the workers) before it ends with exit 1; `pat-ray run CONFIG --resume` continues it",
    )


class TrackingConfig(Strict):
    mlflow: bool = Field(
        True, description="track the run in MLflow as it trains (params, per-epoch metrics, artifacts); false: off"
    )
    tracking_uri: str | None = Field(
        None, description="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory"
    )
    experiment: str = Field(
        "pat_ray",
        description="MLflow experiment the runs go into (a run started inside an active MLflow run nests "
        "under it, in its experiment)",
    )
    registered_model_name: str | None = Field(
        None,
        description="register the pruned model in MLflow's model registry under this name (a new version each run)",
    )
    timeout_s: float = Field(
        5.0,
        gt=0,
        description="how long one request to a tracking server may take; a server that does not answer in time is "
        "one warning, and the run goes on untracked without asking it again",
    )


class OracleConfig(Strict):
    start_epochs: list[int] | None = Field(
        None, description="fixed start epochs the oracle sweep trains; default: see oracle_grid()"
    )
    policies: list[str] = Field(
        default_factory=lambda: [str(kind) for kind in ORACLE_POLICIES],
        description="one trial each besides the fixed grid; `never` = dense, `after_training` = train-prune-fine-tune; "
        "a plugin's start policy too",
    )
    max_concurrent_trials: int = Field(2, ge=1, description="trials run at once (each needs its workers' CPUs/GPUs)")
    seeds: list[int] | None = Field(
        None,
        description="run every trial once per seed (3+ for a verdict that survives noise); default: training.seed",
    )

    @field_validator("policies")
    @classmethod
    def _known_policies(cls, v: list[str]) -> list[str]:
        allowed = oracle_kinds()
        unknown = [p for p in v if p not in allowed]
        if unknown:
            raise ValueError(f"unknown start policies {unknown}; the oracle runs: {', '.join(allowed)}")
        return v

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError(f"must be a non-empty list of distinct seeds, got {v}")
        return v
