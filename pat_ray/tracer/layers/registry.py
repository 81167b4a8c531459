"""Where layer families register: each family names the module classes it covers.

A family module decorates its class with ``@layer_family(nn.Linear, ...)``; the tracer, surgery,
the FLOPs count and the latency probe look a module up with ``LAYERS.family_of``, which walks the
module's class hierarchy from the most specific class, so a subclass with a family of its own wins
over its base's. A class registered twice is refused at import time, naming both families (like
``op_rule`` for ops). Modules a plugin declares (``declared.py``) are matched on their exact class
before this table, and a declared class that has a built-in family is refused when declared.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

from pat_ray.tracer.layers.family import LayerFamily
from pat_ray.tracer.on_import import register_loaded

F = TypeVar("F", bound=type[LayerFamily])


class LayerTable:
    """Layer families by module class; ``register`` refuses a class it holds already."""

    def __init__(self) -> None:
        self._by_class: dict[type[nn.Module], LayerFamily] = {}
        self._families: list[LayerFamily] = []

    def register(self, family: LayerFamily, classes: tuple[type[nn.Module], ...]) -> None:
        taken = [f"{c.__name__} ({type(self._by_class[c]).__name__})" for c in classes if c in self._by_class]
        if taken:
            raise ValueError(f"layer family {type(family).__name__}: {', '.join(taken)} registered already")
        if not classes:
            raise ValueError(f"layer family {type(family).__name__} names no module class")
        self._by_class.update(dict.fromkeys(classes, family))
        self._families.append(family)

    def family_of(self, module: nn.Module) -> LayerFamily | None:
        """The family of the most specific registered class ``module`` is an instance of."""
        register_loaded()
        for cls in type(module).__mro__:
            family = self._by_class.get(cls)
            if family is not None:
                return family
        return None

    def has_class(self, cls: type[nn.Module]) -> bool:
        register_loaded()
        return cls in self._by_class

    def families(self) -> tuple[LayerFamily, ...]:
        """Every family, in the order they registered."""
        register_loaded()
        return tuple(self._families)


LAYERS = LayerTable()


def layer_family(*classes: type[nn.Module]) -> Callable[[F], F]:
    """Register one instance of the decorated ``LayerFamily`` for ``classes`` (and their
    subclasses without a family of their own); its ``types`` become ``classes``."""

    def register(family_class: F) -> F:
        family_class.types = classes
        LAYERS.register(family_class(), classes)
        return family_class

    return register
