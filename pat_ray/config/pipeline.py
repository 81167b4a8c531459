"""The validated pipeline config (pydantic v2). ``Config()`` *is* the default pipeline.

Every model is frozen and forbids unknown keys, so a typo is an error, not a silently ignored
knob. Plugin names (model, dataset, criterion, similarity, surgery backend) are checked against
the live registry. The defaults are the embedded digits pipeline; ``pipelines/digits.yaml``
spells the same values out (a test keeps them equal). The sections are in ``sections``, the
start policies in ``start``.

One way to change a config, from the command line or from Python: ``KEY=VALUE`` overrides,
merged into the YAML before validation (``load_config(path, overrides)``, ``config.override``),
so every error names its key and the config records the overrides that made it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from pat_ray.config.fields import Strict, check_data_here, check_params, expand_path
from pat_ray.config.files import read_yaml
from pat_ray.config.sections import (
    DataConfig,
    ModelConfig,
    OracleConfig,
    PruningConfig,
    ScalingConfig,
    TrackingConfig,
    TrainingConfig,
)
from pat_ray.config.start import EPIStart, StartPolicy
from pat_ray.errors import ConfigError
from pat_ray.plugins.registry import get_registry
from pat_ray.plugins.signatures import check_params as check_factory_params
from pat_ray.plugins.user_code import resolve
from pat_ray.storage import Location, check_scheme, has_scheme

PLAIN_NAME = re.compile(r"[A-Za-z0-9._-]+")
RESERVED_NAMES = {"oracle": "oracle sweeps", "ray": "Ray Train storage"}  # folders beside the runs in output_dir


class Config(Strict):
    name: str = Field(
        "digits",
        description="the run's name: its runs go to output_dir/NAME/<start time>, one folder each (a plain folder "
        "name; `oracle` and `ray` are taken by the sweep and Ray folders)",
    )
    output_dir: str = Field(
        "runs",
        description="where run folders go: a local folder or a URI (s3://, gs://, abfs://, hdfs://, file://, or "
        "any fsspec protocol installed); on a multi-node cluster, storage every node reaches",
    )
    model: ModelConfig = Field(ModelConfig(), description="the network to train and prune")
    data: DataConfig = Field(DataConfig(), description="the dataset and its loaders")
    training: TrainingConfig = Field(TrainingConfig(), description="the schedule, optimizer and numerics")
    pruning: PruningConfig = Field(PruningConfig(), description="criterion, budget and the pruning steps")
    start: StartPolicy = Field(
        EPIStart(), description="when pruning starts: epi, early_bird, fixed, never or after_training"
    )
    scaling: ScalingConfig = Field(ScalingConfig(), description="Ray workers, GPUs and fault tolerance")
    tracking: TrackingConfig = Field(TrackingConfig(), description="MLflow tracking")
    oracle: OracleConfig = Field(OracleConfig(), description="the oracle sweep: start-epoch grid, policies, seeds")
    _overrides: tuple[str, ...] = PrivateAttr(default=())

    @property
    def overrides(self) -> tuple[str, ...]:
        """The ``key=value`` overrides that made this config from its file (or from ``Config()``)."""
        return self._overrides

    def override(self, *pairs: str) -> Config:
        """A new validated config with ``key=value`` pairs applied, exactly as the command line's
        ``KEY=VALUE`` (YAML values; ``start.kind=fixed`` switches to that policy's defaults);
        ConfigError names each key that is wrong."""
        from pat_ray.config.keys import apply_overrides  # keys describes Config: it imports this module

        merged = apply_overrides(self.model_dump(mode="json"), list(pairs))
        return config_from_dict(merged, f"override {' '.join(pairs)}", (*self._overrides, *pairs))

    @field_validator("name")
    @classmethod
    def _plain_folder_name(cls, v: str) -> str:
        """The run's folder and MLflow name: letters, digits and ``-_.``, so that no shell, store
        or filesystem reads it as something else (``${HOME}``, control characters, ``..``)."""
        if not PLAIN_NAME.fullmatch(v) or v.strip(".") == "" or len(v) > 128:
            raise ValueError(
                f"{v!r} is not a plain folder name: use letters, digits, '-', '_' and '.' (at most 128, not only dots)"
            )
        if v in RESERVED_NAMES:
            raise ValueError(f"{v!r} is taken: output_dir/{v} holds pat_ray's {RESERVED_NAMES[v]}; choose another name")
        return v

    @field_validator("output_dir", mode="before")
    @classmethod
    def _expand_output_dir(cls, v: Any) -> Any:
        if not isinstance(v, str | Path):
            return v
        if has_scheme(v):
            check_scheme(str(v))  # nothing is ever written to a local folder named after a scheme
            return str(v)
        path = expand_path(v, "output_dir")
        if path.exists() and not path.is_dir():
            raise ValueError(f"{str(v)!r} is a file, not a folder")
        return str(path)

    def runs_folder(self) -> Location:
        """``output_dir/name``: the folder (or URI) holding every run of this name, one
        version folder each (``pat_ray.run_folder.versions``)."""
        return Location.of(self.output_dir) / self.name

    @model_validator(mode="after")
    def _plugin_params_accepted(self) -> Config:
        if "num_classes" in self.model.params:
            raise ValueError("model.params: num_classes is set from the dataset; remove it")
        supplied = ("num_classes", "in_channels", "image_size")  # recipes.offered_by
        if self.model.target is not None:
            factory = resolve(self.model.target, "model.target")
            check_factory_params(factory, self.model.params, supplied, f"model.params: {self.model.target}")
        else:
            check_params("model.params", "model", str(self.model.name), self.model.params, supplied=supplied)
        if self.data.target is not None:
            factory = resolve(self.data.target, "data.target")
            check_factory_params(factory, self.data.params, (), f"data.params: {self.data.target}")
        else:
            self._dataset_params_accepted(str(self.data.name))
        criterion = self.pruning.criterion
        check_params("pruning.criterion.params", "criterion", criterion.name, criterion.params)  # and its check()
        return self

    def _dataset_params_accepted(self, name: str) -> None:
        check_params("data.params", "dataset", name, self.data.params, early=False)
        try:
            get_registry().early_check("dataset", name, self.data.params)
        except ValueError as err:
            check_data_here("data.params", str(err))

    @model_validator(mode="after")
    def _schedule_fits(self) -> Config:
        """What the config alone decides; the pruning steps against the epochs' length in
        iterations are checked where the data is known (``pat_ray.config.plan``)."""
        epochs = self.training.epochs
        problem = self.start.schedule_problem(epochs, self.start.cadence.count(epochs, None))
        if problem:
            raise ValueError(problem)
        latest = getattr(self.start, "latest_start", None)
        if isinstance(latest, int) and latest >= epochs:
            raise ValueError(f"start.latest_start ({latest}) must be < training.epochs ({epochs})")
        late = [e for e in self.oracle.start_epochs or [] if not 0 <= e < epochs]
        if late:
            raise ValueError(f"oracle.start_epochs {late} must be in [0, training.epochs={epochs})")
        return self


def oracle_grid(config: Config) -> list[int]:
    """The oracle's start epochs: as configured, else 0 and every 10% of the run up to 2/3."""
    if config.oracle.start_epochs is not None:
        return sorted(set(config.oracle.start_epochs))
    epochs = config.training.epochs
    return sorted({round(epochs * tenth / 10) for tenth in range(0, 7)} - {epochs})


def _format(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        for message in e["msg"].removeprefix("Value error, ").splitlines():
            named = not path or message.startswith(path + ".")  # whole-config checks, a policy's own fields
            lines.append(message if named else f"{path}: {message}")
    return lines


def config_from_dict(data: Any, source: str = "<config>", overrides: Sequence[str] = ()) -> Config:
    """Validate a parsed config; ``overrides``: the ``key=value`` pairs already merged into it."""
    try:
        config = Config.model_validate(data if data is not None else {})
    except ValidationError as err:
        raise ConfigError(source, _format(err)) from None
    config._overrides = tuple(overrides)
    return config


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read and validate a YAML pipeline config (None: the default pipeline) with ``key=value``
    ``overrides`` merged in first, as ``pat-ray run CONFIG KEY=VALUE...`` does; raises
    ConfigError listing every problem, each naming its key."""
    from pat_ray.config.keys import apply_overrides  # keys describes Config: it imports this module

    data = read_yaml(path) if path is not None else None
    if not overrides:
        return config_from_dict(data, str(path or "the default pipeline"))
    source = f"{path or 'the default pipeline'} with {' '.join(overrides)}"
    return config_from_dict(apply_overrides(data, list(overrides)), source, overrides)


def config_to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


__all__ = [
    "Config",
    "ConfigError",
    "RESERVED_NAMES",
    "config_from_dict",
    "config_to_yaml",
    "load_config",
    "oracle_grid",
]
