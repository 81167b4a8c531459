"""What every config section is built from: the strict base model, path expansion, and plugin
names checked against the live registry."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, ConfigDict

from pat_ray.plugins.registry import get_registry


def expand_path(value: str | Path, what: str) -> Path:
    """``~`` and ``$VARS`` expanded, so one pipeline file serves machines with different mounts."""
    expanded = os.path.expandvars(os.path.expanduser(str(value)))
    if "$" in expanded:
        raise ValueError(f"{what} {str(value)!r} uses an environment variable that is not set")
    return Path(expanded)


class Strict(BaseModel):
    # allow_inf_nan: an infinite lr or weight decay is a typo, and it diverges at iteration 1
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """With ``update``, a copy validated as a new config is: pydantic's own copy would keep
        a section given as a mapping as a plain dict and skip every check."""
        if not update:
            return super().model_copy(deep=deep)
        copy = type(self).model_validate({**dict(self), **update})
        if self.__pydantic_private__:
            object.__setattr__(copy, "__pydantic_private__", dict(self.__pydantic_private__))
        return copy


def check_params(
    field: str, kind: str, name: str, params: dict[str, Any], supplied: tuple[str, ...] = (), early: bool = True
) -> None:
    """Plugin params the factory does not accept fail at validation, naming what it accepts.
    (Checked on the whole Config, not per section: the sections' default instances are built
    at import time, before any plugin is loaded.)"""
    try:
        get_registry().check_params(kind, name, params, supplied, early)
    except ValueError as err:
        raise ValueError(f"{field}: {err}") from None


def _registered(kind: str) -> Callable[[str], str]:
    """A validator: the name must be registered as a plugin of ``kind``."""

    def check(name: str) -> str:
        names = get_registry().names(kind)
        if name not in names:
            raise ValueError(f"unknown {kind} {name!r}; registered: {', '.join(names) or 'none'}")
        return name

    return check


ModelName = Annotated[str, AfterValidator(_registered("model"))]
DatasetName = Annotated[str, AfterValidator(_registered("dataset"))]
CriterionName = Annotated[str, AfterValidator(_registered("criterion"))]
SurgeryName = Annotated[str, AfterValidator(_registered("surgery"))]
SimilarityName = Annotated[str, AfterValidator(_registered("similarity"))]


def data_on_workers() -> bool:
    """A run going to a Ray cluster (``RAY_ADDRESS`` set) reads its data on the worker nodes,
    which may hold files this machine lacks: checks of the data here only warn, and each worker
    checks its own before the first epoch."""
    return bool(os.environ.get("RAY_ADDRESS"))


class DataWarning(UserWarning):
    """The data is missing here, on the driver of a cluster run (it may exist on the workers)."""


def check_data_here(field: str, problem: str) -> None:
    """``problem`` with the data: an error, or for a cluster run a warning."""
    if not data_on_workers():
        raise ValueError(problem)
    warnings.warn(f"{field}: {problem} (on this machine; each Ray worker checks its own)", DataWarning, stacklevel=3)


def dotted(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"section.key": value}`` (how fields are named to users)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(dotted(value, f"{name}."))
        else:
            flat[name] = value
    return flat
