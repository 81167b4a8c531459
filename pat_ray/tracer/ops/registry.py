"""Where op rules register: each rule names the functions and method names it covers.

A rule module decorates its rule with ``@op_rule(kind, functions=..., methods=..., form=...)``;
the tracer looks a ``call_function`` / ``call_method`` node's target up with ``op_family``. The
``form`` says which calls of a target the rule is for, as one target can be several ops:
``tensor`` (returns one tensor: ``max(a, b)``, ``x[:, :4]``), ``pieces`` (returns several:
``split``, ``max(x, dim)``) or ``tuple`` (reads the tuple such an op returned: ``pieces[0]``,
``cat(pieces)``). A kind, or a target in one form, registered twice is refused at import time,
naming both registrations, so two rules can never silently compete for one op (PyTorch's
``register_op_impl`` works the same way).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, TypeVar

from pat_ray.tracer.on_import import register_loaded
from pat_ray.tracer.ops.call import OpRule

OpForm = Literal["tensor", "pieces", "tuple"]
FORMS: tuple[OpForm, ...] = ("tensor", "pieces", "tuple")
R = TypeVar("R", bound=OpRule)  # a rule keeps its own signature once registered


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
    form: OpForm = "tensor"


class OpTable:
    """Op kinds by name and by target; ``register`` refuses a kind or target it holds already."""

    def __init__(self) -> None:
        self._kinds: dict[str, OpFamily] = {}
        self._functions: dict[OpForm, dict[object, OpFamily]] = {form: {} for form in FORMS}
        self._methods: dict[OpForm, dict[str, OpFamily]] = {form: {} for form in FORMS}

    def register(self, family: OpFamily) -> None:
        if family.form not in FORMS:
            raise ValueError(f"op kind {family.kind!r}: form must be one of {FORMS}, not {family.form!r}")
        if family.kind in self._kinds:
            raise ValueError(
                f"op kind {family.kind!r} is registered already (rule {_name(self._kinds[family.kind].rule)})"
            )
        functions, methods = self._functions[family.form], self._methods[family.form]
        taken = [f"{_name(f)} (kind {functions[f].kind!r})" for f in family.functions if f in functions]
        taken += [f".{m}() (kind {methods[m].kind!r})" for m in family.methods if m in methods]
        if taken:
            raise ValueError(f"op kind {family.kind!r}: {', '.join(sorted(taken))} registered already")
        self._kinds[family.kind] = family
        functions.update(dict.fromkeys(family.functions, family))
        methods.update(dict.fromkeys(family.methods, family))

    def family(self, op: str, target: object, form: OpForm = "tensor") -> OpFamily | None:
        """The family of a ``call_function`` / ``call_method`` node's target in ``form`` (None: no
        rule knows it)."""
        if op == "call_method":
            return self._methods[form].get(target) if isinstance(target, str) else None
        if op != "call_function":
            return None
        register_loaded()
        try:
            return self._functions[form].get(target)
        except TypeError:  # an unhashable target
            return None

    def names(self, form: OpForm) -> list[str]:
        """The method names (``.split()``) and functions (``torch.split``) registered in ``form``,
        for an error that lists what is supported."""
        register_loaded()
        methods = [f".{m}()" for m in sorted(self._methods[form])]
        return methods + sorted({_name(f) for f in self._functions[form]} - {f"torch.{m}" for m in self._methods[form]})

    def __getitem__(self, kind: str) -> OpFamily:
        return self._kinds[kind]

    def kinds(self) -> list[str]:
        return sorted(self._kinds)


OPS = OpTable()


def op_rule(
    kind: str,
    *,
    functions: Iterable[object] = (),
    methods: Iterable[str] = (),
    needs_input: bool = True,
    form: OpForm = "tensor",
) -> Callable[[R], R]:
    """Register the decorated function as the rule of ``kind`` for these targets called in
    ``form`` (it may be stacked to give one rule several kinds); a kind, or a target in that
    form, already registered is refused."""

    def register(rule: R) -> R:
        OPS.register(
            OpFamily(
                kind=kind,
                functions=frozenset(functions),
                methods=frozenset(methods),
                rule=rule,
                needs_input=needs_input,
                form=form,
            )
        )
        return rule

    return register


def _name(target: object) -> str:
    module = getattr(target, "__module__", None) or ""
    return f"{module}.{getattr(target, '__name__', target)}".lstrip(".")  # torch.relu, not its C class
