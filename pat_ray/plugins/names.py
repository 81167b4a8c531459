"""The name registry: every name a plugin registered, per kind, with what makes it and which
plugin (and distribution) provides it. A name registered twice is an error naming both
plugins, never a silent override. Built by ``collect`` from a pluggy manager (``registry.py``
holds the process-wide one)."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast, overload

import pluggy

from pat_ray.errors import PluginError
from pat_ray.plugins.guard import Guarded
from pat_ray.plugins.signatures import check_params as check_factory_params

if TYPE_CHECKING:
    from torch import nn

    from pat_ray.core.contracts import SimilarityMetric, SurgeryBackend
    from pat_ray.core.criterion import Criterion
    from pat_ray.core.data import DataBundle
    from pat_ray.tracer.layers.declared import LayerRule

KINDS = {
    "criterion": "pat_ray_register_criteria",
    "similarity": "pat_ray_register_similarity_metrics",
    "surgery": "pat_ray_register_surgery_backends",
    "model": "pat_ray_register_models",
    "dataset": "pat_ray_register_datasets",
    "layer": "pat_ray_register_layers",
    "start_policy": "pat_ray_register_start_policies",
}
GUARDED_KINDS = ("criterion", "similarity", "surgery")  # called during training, so failures are named


@dataclass(frozen=True)
class Deferred:
    """A factory named by import path (``"package.module:attribute"``), with leading positional
    arguments: listing names (``pat-ray plugins``, ``pat-ray config``) then imports nothing of
    the plugin, and a plugin whose classes need torch costs torch's import only when used."""

    path: str
    args: tuple[Any, ...] = ()

    def resolve(self) -> Callable[..., Any]:
        module_name, _, attribute = self.path.partition(":")
        if not module_name or not attribute:
            raise ValueError(f"{self.path!r} is not a 'package.module:attribute' path")
        made = getattr(importlib.import_module(module_name), attribute)
        return functools.partial(made, *self.args) if self.args else made


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    target: Callable[..., Any] | Deferred
    plugin: str
    distribution: str

    @functools.cached_property
    def factory(self) -> Callable[..., Any]:
        """What makes this name's objects; a deferred one is imported here, on first use."""
        if not isinstance(self.target, Deferred):
            return self.target
        try:
            return self.target.resolve()
        except Exception as err:  # an import runs the plugin's module: anything can fail there
            raise PluginError(
                f"{self.kind} {self.name!r} from plugin {self.plugin!r} ({self.distribution}): "
                f"cannot import {self.target.path}: {err!r}"
            ) from err


class Registry:
    """Every registered name per kind, with the plugin and distribution that provides it."""

    def __init__(self, entries: list[Entry]) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        for entry in entries:
            table = self._entries[entry.kind]
            if entry.name in table:
                first = table[entry.name]
                raise PluginError(
                    f"{entry.kind} {entry.name!r} is registered twice: by plugin "
                    f"{first.plugin!r} ({first.distribution}) and by plugin "
                    f"{entry.plugin!r} ({entry.distribution})"
                )
            table[entry.name] = entry

    def layer_rules(self) -> dict[type, LayerRule]:
        """The declared custom modules, by module type; a type declared twice names both plugins,
        and a type with a built-in family (``nn.Linear``) is refused: one class, one rule."""
        if not self._entries["layer"]:
            return {}
        from pat_ray.tracer.layers.declared import LayerRule  # the tracer (and torch) only once rules are read
        from pat_ray.tracer.layers.table import LAYERS

        rules: dict[type, Entry] = {}
        for entry in self._entries["layer"].values():
            rule = entry.factory
            if not isinstance(rule, LayerRule):
                raise PluginError(
                    f"layer {entry.name!r} from plugin {entry.plugin!r} ({entry.distribution}): "
                    f"register a pat_ray.LayerRule, not {type(rule).__name__}"
                )
            if LAYERS.has_class(rule.module_type):
                raise PluginError(
                    f"layer {entry.name!r} from plugin {entry.plugin!r} declares {rule.module_type.__name__}, which "
                    "has a built-in layer family; declare a subclass of your own instead"
                )
            first = rules.get(rule.module_type)
            if first is not None:
                raise PluginError(
                    f"module {rule.module_type.__name__} is declared twice: as layer {first.name!r} by plugin "
                    f"{first.plugin!r} and as layer {entry.name!r} by plugin {entry.plugin!r}"
                )
            rules[rule.module_type] = entry
        return {module_type: cast(LayerRule, entry.factory) for module_type, entry in rules.items()}

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def entries(self) -> list[Entry]:
        return [e for kind in KINDS for e in self._entries[kind].values()]

    def get(self, kind: str, name: str) -> Entry:
        try:
            return self._entries[kind][name]
        except KeyError:
            choices = ", ".join(self.names(kind)) or "none"
            raise KeyError(f"unknown {kind} {name!r}; registered: {choices}") from None

    def check_params(
        self, kind: str, name: str, params: dict[str, Any], supplied: tuple[str, ...] = (), early: bool = True
    ) -> None:
        """Raise ValueError unless ``name``'s factory accepts ``params`` (plus the keyword
        arguments the caller ``supplied`` itself), so a typo fails at validation, not at run start;
        ``early``: also run the factory's own early check."""
        entry = self.get(kind, name)
        check_factory_params(entry.factory, params, supplied, f"{kind} {name!r} ({entry.plugin})")
        if early:
            self.early_check(kind, name, params)

    def early_check(self, kind: str, name: str, params: dict[str, Any]) -> None:
        """Run the factory's own early check (e.g. its files exist), if it has one; ValueError."""
        check = getattr(self.get(kind, name).factory, "check", None)
        if callable(check):
            try:
                check(**params)
            except (OSError, ValueError) as err:
                raise ValueError(str(err)) from None

    @overload
    def create(self, kind: Literal["criterion"], name: str, **params: Any) -> Criterion: ...
    @overload
    def create(self, kind: Literal["similarity"], name: str, **params: Any) -> SimilarityMetric: ...
    @overload
    def create(self, kind: Literal["surgery"], name: str, **params: Any) -> SurgeryBackend: ...
    @overload
    def create(self, kind: Literal["model"], name: str, **params: Any) -> nn.Module: ...
    @overload
    def create(self, kind: Literal["dataset"], name: str, **params: Any) -> DataBundle: ...
    @overload
    def create(self, kind: str, name: str, **params: Any) -> Any: ...

    def create(self, kind: str, name: str, **params: Any) -> Any:
        """An instance from ``name``'s factory, typed by its kind; criteria, similarities and
        surgery backends come wrapped so that an exception inside them says which plugin raised it."""
        entry = self.get(kind, name)
        try:
            made = entry.factory(**params)
        except TypeError as err:
            raise ValueError(f"{kind} {name!r} ({entry.plugin}): bad parameters: {err}") from err
        if kind not in GUARDED_KINDS:
            return made
        return Guarded(made, f"{kind} {name!r} from plugin {entry.plugin!r} ({entry.distribution})")


def collect(manager: pluggy.PluginManager) -> Registry:
    dists = {id(p): f"{d.project_name} {d.version}" for p, d in manager.list_plugin_distinfo()}
    entries: list[Entry] = []
    for kind, hook_name in KINDS.items():
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            dist = dists.get(id(impl.plugin)) or origin(impl.plugin)

            def register(name: str, factory: Callable[..., Any] | str | Deferred, _k=kind, _i=impl, _d=dist):
                target = Deferred(factory) if isinstance(factory, str) else factory
                entries.append(Entry(_k, name, target, _i.plugin_name, _d))

            try:
                impl.function(register=register)
            except Exception as err:
                raise PluginError(f"plugin {impl.plugin_name!r} ({dist}) failed in {hook_name}: {err!r}") from err
    return Registry(entries)


def origin(plugin: object) -> str:
    """Where a plugin without entry-point metadata came from: pat_ray itself, or this process."""
    module = plugin.__name__ if inspect.ismodule(plugin) else type(plugin).__module__
    return "pat-ray (built-in)" if module.startswith("pat_ray.") else "registered in-process"
