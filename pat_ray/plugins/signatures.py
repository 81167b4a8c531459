"""What a factory takes: the keyword arguments pat_ray may offer it, and a check of a config's
params against its signature (a typo fails at validation, naming what it accepts)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

ALWAYS_OFFERED = ("num_classes",)  # a registered model's factory takes it, if only through **kwargs


def accepted(factory: Callable[..., Any], offered: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``offered`` that ``factory`` takes (pat_ray offers ``num_classes``
    and ``in_channels`` from the data; a model that hard-codes them is not given them)."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return dict(offered)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):  # torchvision's builders
        return {key: value for key, value in offered.items() if key in parameters or key in ALWAYS_OFFERED}
    return {key: value for key, value in offered.items() if key in parameters}


def check_params(factory: Callable[..., Any], params: dict[str, Any], supplied: Iterable[str], label: str) -> None:
    """ValueError unless ``factory`` accepts ``params`` (besides what pat_ray ``supplied``),
    naming what it accepts."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return  # a builtin or C factory: nothing to check against
    offered = accepted(factory, dict.fromkeys(key for key in supplied if key not in params))
    try:
        signature.bind(**params, **offered)
    except TypeError as err:
        names = [p for p in signature.parameters if p not in offered and not p.startswith("_")]
        raise ValueError(
            f"{label} does not take these params: {err}; it accepts: {', '.join(names) or 'none'}"
        ) from None
