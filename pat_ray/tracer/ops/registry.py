"""Where op rules register: each rule names the functions and method names it covers.

A rule module decorates its rule with ``@op_rule(kind, functions=..., methods=...)``; the
tracer looks a ``call_function`` / ``call_method`` node's target up with ``op_family``. A kind
or a target registered twice is refused at import time, naming both registrations, so two
rules can never silently compete for one op (PyTorch's ``register_op_impl`` works the same
way). Ops that return several tensors (``split``, ``max(x, dim)``) are followed on the tracer's
tuple path (``ops/splits.py``, ``ops/reductions.py``), not here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pat_ray.tracer.ops.call import OpRule


@dataclass(frozen=True, kw_only=True)
class OpFamily:
    """One kind of op: its targets and its rule. ``needs_input``: without a traced tensor among
    its arguments the op carries no channels (shape arithmetic) and is skipped; an op that
    makes a tensor from a size runs its rule anyway."""

    kind: str
    functions: frozenset[object]
    methods: frozenset[str]
    rule: OpRule
    needs_input: bool = True


class OpTable:
    """Op kinds by name and by target; ``register`` refuses a kind or target it holds already."""

    def __init__(self) -> None:
        self._kinds: dict[str, OpFamily] = {}
        self._functions: dict[object, OpFamily] = {}
        self._methods: dict[str, OpFamily] = {}

    def register(self, family: OpFamily) -> None:
        if family.kind in self._kinds:
            raise ValueError(
                f"op kind {family.kind!r} is registered already (rule {_name(self._kinds[family.kind].rule)})"
            )
        taken = [f"{_name(f)} (kind {self._functions[f].kind!r})" for f in family.functions if f in self._functions]
        taken += [f".{m}() (kind {self._methods[m].kind!r})" for m in family.methods if m in self._methods]
        if taken:
            raise ValueError(f"op kind {family.kind!r}: {', '.join(sorted(taken))} registered already")
        self._kinds[family.kind] = family
        self._functions.update(dict.fromkeys(family.functions, family))
        self._methods.update(dict.fromkeys(family.methods, family))

    def family(self, op: str, target: object) -> OpFamily | None:
        """The family of a ``call_function`` / ``call_method`` node's target (None: no rule knows it)."""
        if op == "call_method":
            return self._methods.get(target) if isinstance(target, str) else None
        try:
            return self._functions.get(target)
        except TypeError:  # an unhashable target
            return None

    def __getitem__(self, kind: str) -> OpFamily:
        return self._kinds[kind]

    def kinds(self) -> list[str]:
        return sorted(self._kinds)


OPS = OpTable()


def op_rule(
    kind: str, *, functions: Iterable[object] = (), methods: Iterable[str] = (), needs_input: bool = True
) -> Callable[[OpRule], OpRule]:
    """Register the decorated function as the rule of ``kind`` for these targets (it may be
    stacked to give one rule several kinds); a kind or target already registered is refused."""

    def register(rule: OpRule) -> OpRule:
        OPS.register(
            OpFamily(
                kind=kind,
                functions=frozenset(functions),
                methods=frozenset(methods),
                rule=rule,
                needs_input=needs_input,
            )
        )
        return rule

    return register


def _name(target: object) -> str:
    module = getattr(target, "__module__", None) or ""
    return f"{module}.{getattr(target, '__name__', target)}".lstrip(".")  # torch.relu, not its C class
