"""Public names imported on first use: ``pat_ray`` and ``pat_ray.sdk`` each list theirs as
``name -> (module, attribute)``, so importing either stays light (no torch) while type checkers
read the real imports under ``TYPE_CHECKING``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(
    package: str, table: Mapping[str, tuple[str, str]], public: list[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package`` serving ``table``."""

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attribute = table[name]
        return getattr(importlib.import_module(module), attribute)

    def __dir__() -> list[str]:
        return sorted(public)

    return __getattr__, __dir__
