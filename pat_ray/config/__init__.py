"""The pipeline config: ``Config`` and its sections, the start policies, reading YAML and
``key=value`` overrides. Everything a caller needs is importable from here."""

from pat_ray.config.files import read_yaml
from pat_ray.config.pipeline import RESERVED_NAMES, Config, config_from_dict, config_to_yaml, load_config, oracle_grid
from pat_ray.config.sections import (
    BudgetConfig,
    CriterionConfig,
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    OracleConfig,
    PruningConfig,
    ScalingConfig,
    ScheduleConfig,
    TrackingConfig,
    TrainingConfig,
)
from pat_ray.config.start import (
    ORACLE_POLICIES,
    AfterTrainingStart,
    BaseStartPolicy,
    EarlyBirdStart,
    EPIStart,
    FixedStart,
    NeverStart,
    OraclePolicy,
    StartKind,
    StartPolicy,
    WatchingStartPolicy,
)
from pat_ray.errors import ConfigError

__all__ = [
    "ORACLE_POLICIES",
    "RESERVED_NAMES",
    "AfterTrainingStart",
    "BaseStartPolicy",
    "BudgetConfig",
    "Config",
    "ConfigError",
    "CriterionConfig",
    "DataConfig",
    "EarlyBirdStart",
    "EPIStart",
    "FixedStart",
    "ModelConfig",
    "NeverStart",
    "OptimizerConfig",
    "OracleConfig",
    "OraclePolicy",
    "PruningConfig",
    "ScalingConfig",
    "ScheduleConfig",
    "StartKind",
    "StartPolicy",
    "TrackingConfig",
    "TrainingConfig",
    "WatchingStartPolicy",
    "config_from_dict",
    "config_to_yaml",
    "load_config",
    "oracle_grid",
    "read_yaml",
]
