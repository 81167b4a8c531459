"""The plugin manager and the name registry built from it.

Built-ins in ``pat_ray.plugins.builtin`` register through the same hooks as third-party
plugins, which are discovered through the ``pat_ray`` entry-point group (set
``PAT_RAY_DISABLE_PLUGIN_AUTOLOAD=1`` to skip them). A name registered twice is an error
naming both plugins, never a silent override.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import io
import os
import sys
import tempfile
import types
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pluggy

from pat_ray.errors import PluginError, PluginFailure
from pat_ray.plugins import hookspecs

if TYPE_CHECKING:
    from pat_ray.tracer.layers.declared import LayerRule
from pat_ray.plugins.signatures import check_params as check_factory_params

KINDS = {
    "criterion": "pat_ray_register_criteria",
    "similarity": "pat_ray_register_similarity_metrics",
    "surgery": "pat_ray_register_surgery_backends",
    "model": "pat_ray_register_models",
    "dataset": "pat_ray_register_datasets",
    "layer": "pat_ray_register_layers",
    "start_policy": "pat_ray_register_start_policies",
}
DEFAULT_PLUGINS = (
    "pat_ray.plugins.builtin.criteria.magnitude",
    "pat_ray.plugins.builtin.criteria.bn_scale",
    "pat_ray.plugins.builtin.criteria.taylor",
    "pat_ray.plugins.builtin.similarity",
    "pat_ray.plugins.builtin.surgery_native",
    "pat_ray.plugins.builtin.models",
    "pat_ray.plugins.builtin.datasets",
    "pat_ray.plugins.builtin.idx_datasets",
)
AUTOLOAD_SWITCH = "PAT_RAY_DISABLE_PLUGIN_AUTOLOAD"


GUARDED_KINDS = ("criterion", "similarity", "surgery")  # called during training, so failures are named


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str


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
        from pat_ray.tracer.layers.declared import LayerRule  # the tracer (and torch) only once rules are read

        """The declared custom modules, by module type; a type declared twice names both plugins."""
        rules: dict[type, Entry] = {}
        for entry in self._entries["layer"].values():
            rule = entry.factory
            if not isinstance(rule, LayerRule):
                raise PluginError(
                    f"layer {entry.name!r} from plugin {entry.plugin!r} ({entry.distribution}): "
                    f"register a pat_ray.LayerRule, not {type(rule).__name__}"
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

    def create(self, kind: str, name: str, **params: Any) -> Any:
        """An instance from ``name``'s factory; criteria, similarities and surgery backends
        come wrapped so that an exception inside them says which plugin raised it."""
        entry = self.get(kind, name)
        try:
            made = entry.factory(**params)
        except TypeError as err:
            raise ValueError(f"{kind} {name!r} ({entry.plugin}): bad parameters: {err}") from err
        return _Guarded(made, entry) if kind in GUARDED_KINDS else made


class _Guarded:
    """Delegates to a plugin object; turns its exceptions into a ``PluginFailure`` naming it."""

    def __init__(self, target: Any, entry: Entry) -> None:
        self._target, self._entry = target, entry

    def _fail(self, where: str, err: Exception) -> PluginFailure:
        e = self._entry
        return PluginFailure(
            f"{e.kind} {e.name!r} from plugin {e.plugin!r} ({e.distribution}) raised in {where}: "
            f"{type(err).__name__}: {err}"
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._target(*args, **kwargs)
        except Exception as err:
            raise self._fail("its call", err) from err

    def __getattr__(self, attribute: str) -> Any:
        value = getattr(self._target, attribute)
        if not callable(value):
            return value

        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return value(*args, **kwargs)
            except Exception as err:
                raise self._fail(f"{attribute}()", err) from err

        return guarded


def build_plugin_manager(load_entry_points: bool | None = None) -> pluggy.PluginManager:
    manager = pluggy.PluginManager("pat_ray")
    manager.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        manager.register(importlib.import_module(module_name), name=module_name)
    if load_entry_points is None:
        load_entry_points = not os.environ.get(AUTOLOAD_SWITCH)
    if load_entry_points:
        try:
            manager.load_setuptools_entrypoints("pat_ray")
        except Exception as err:
            raise PluginError(f"{_failing_entry_point()} failed to load: {err!r}") from err
    _check_pending(manager)
    return manager


def _check_pending(manager: pluggy.PluginManager) -> None:
    """pluggy's check, with the offending plugin and its distribution named."""
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as err:
        dists = {id(p): f"{d.project_name} {d.version}" for p, d in manager.list_plugin_distinfo()}
        dist = dists.get(id(err.plugin)) or _origin(err.plugin)
        raise PluginError(f"plugin {manager.get_name(err.plugin)!r} ({dist}): {err}") from None


def _failing_entry_point() -> str:
    """Name the entry point (and its distribution) that fails to import."""
    for ep in importlib.metadata.entry_points(group="pat_ray"):
        try:
            ep.load()
        except Exception:
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution"
            return f"plugin {ep.name!r} ({dist})"
    return "a pat_ray entry-point plugin"


def collect(manager: pluggy.PluginManager) -> Registry:
    dists = {id(p): f"{d.project_name} {d.version}" for p, d in manager.list_plugin_distinfo()}
    entries: list[Entry] = []
    for kind, hook_name in KINDS.items():
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            dist = dists.get(id(impl.plugin)) or _origin(impl.plugin)

            def register(name: str, factory: Callable[..., Any], _k=kind, _i=impl, _d=dist):
                entries.append(Entry(_k, name, factory, _i.plugin_name, _d))

            try:
                impl.function(register=register)
            except Exception as err:
                raise PluginError(f"plugin {impl.plugin_name!r} ({dist}) failed in {hook_name}: {err!r}") from err
    return Registry(entries)


def _origin(plugin: object) -> str:
    """Where a plugin without entry-point metadata came from: pat_ray itself, or this process."""
    module = plugin.__name__ if inspect.ismodule(plugin) else type(plugin).__module__
    return "pat-ray (built-in)" if module.startswith("pat_ray.") else "registered in-process"


_manager: pluggy.PluginManager | None = None
_registry: Registry | None = None
_in_process: dict[str, tuple[object, ShippedPlugin]] = {}  # what register_plugin added, as it will ship


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (built-ins + entry points, built on first use)."""
    global _manager
    if _manager is None:
        _manager = build_plugin_manager()
    return _manager


def get_registry() -> Registry:
    """The process-wide registry of names (built on first use)."""
    global _registry
    if _registry is None:
        registry = collect(get_plugin_manager())
        _set_rules(registry.layer_rules())  # the tracer reads them from core
        _registry = registry
    return _registry


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register a plugin object or module in this process (no entry point needed).

    Duplicate names fail here, and the plugin is unregistered again, so a bad plugin never
    leaves the registry half-changed. Ray workers started by this process get it too (see
    :func:`shipped_plugins`).
    """
    global _registry
    manager = get_plugin_manager()
    try:
        registered_name = manager.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as err:  # ValueError: registered already
        raise PluginError(f"plugin {name or _origin(plugin)!r}: {err}") from None
    try:
        _check_pending(manager)
        registry = collect(manager)
        _set_rules(registry.layer_rules())
    except Exception:
        manager.unregister(plugin)
        raise
    _registry = registry
    shipped_name = registered_name or manager.get_name(plugin)
    if shipped_name is not None:  # a module's source is read now: its files may be gone when a run starts
        _in_process[shipped_name] = (plugin, _shippable(shipped_name, plugin))


@dataclass(frozen=True)
class ShippedPlugin:
    """An in-process plugin as it travels to a Ray worker: a module as its source (the file, or
    the whole top-level package it belongs to, zipped) and its import name, since a worker on
    another node has neither the driver's files nor its ``sys.path``; any other object as
    itself (Ray pickles it). The bytes ride in the task's arguments through Ray's object store."""

    name: str
    module: str | None = None
    archive: bytes = b""
    instance: object = None


SHIP_LIMIT = 64 * 2**20  # a plugin package larger than this is a packaging mistake, not a plugin


def shipped_plugins() -> list[ShippedPlugin]:
    """The plugins this process registered with :func:`register_plugin` and still holds,
    ready to hand to Ray workers, which otherwise see only built-ins and entry points."""
    manager = get_plugin_manager()
    shipped = [shipped for name, (plugin, shipped) in _in_process.items() if manager.get_plugin(name) is plugin]
    for plugin in shipped:
        if plugin.module is not None and not plugin.archive:
            raise PluginError(f"plugin {plugin.name!r} is a module without a file; Ray workers cannot load it")
    return shipped


def _shippable(name: str, plugin: object) -> ShippedPlugin:
    if not inspect.ismodule(plugin):
        return ShippedPlugin(name, instance=plugin)
    if getattr(plugin, "__file__", None) is None:
        return ShippedPlugin(name, module=plugin.__name__)  # fine in this process; refused when shipped
    return ShippedPlugin(name, module=plugin.__name__, archive=_module_archive(name, plugin))


def _module_archive(name: str, module: types.ModuleType) -> bytes:
    """A zip of the module's source: its file, or the top-level package holding it."""
    parts = module.__name__.split(".")
    source = Path(module.__file__)  # type: ignore[arg-type]
    is_package = source.name == "__init__.py"
    root = source.parents[len(parts) - 1 + is_package]  # the folder the top-level name is imported from
    files = [source] if len(parts) == 1 and not is_package else sorted((root / parts[0]).rglob("*.py"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in files:
            archive.write(file, file.relative_to(root).as_posix())
    if buffer.tell() > SHIP_LIMIT:
        raise PluginError(f"plugin {name!r}: its package {root / parts[0]} is over {SHIP_LIMIT >> 20} MiB of source")
    return buffer.getvalue()


def install_shipped(plugins: list[ShippedPlugin]) -> None:
    """Register, in a Ray worker, the plugins its driver registered in-process (once each)."""
    manager = get_plugin_manager()
    for shipped in plugins:
        if manager.get_plugin(shipped.name) is not None:
            continue  # a reused worker process, or the driver itself
        plugin = shipped.instance
        if shipped.module is not None:
            plugin = _import_shipped(shipped)
        register_plugin(plugin, name=shipped.name)


def _import_shipped(shipped: ShippedPlugin) -> types.ModuleType:
    """Unpack the plugin's source into a folder of this process and import it from there, so
    a worker imports what the driver had even when the driver's file is gone or elsewhere."""
    folder = Path(tempfile.mkdtemp(prefix=f"pat_ray_plugin_{shipped.name}_"))
    with zipfile.ZipFile(io.BytesIO(shipped.archive)) as archive:
        archive.extractall(folder)
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(shipped.module)  # type: ignore[arg-type]
    except Exception as err:
        raise PluginError(f"plugin {shipped.name!r}: its shipped source failed to import here: {err!r}") from None


def unregister_plugins() -> None:
    """Forget every plugin registered in this process with ``register_plugin``: a notebook that
    runs its registering cell again, or a test that registered its own. The manager and registry
    are rebuilt from the built-ins and entry points on next use, and no later Ray worker gets
    the forgotten plugins."""
    global _manager, _registry
    _manager = _registry = None
    _in_process.clear()
    _set_rules({})


def _set_rules(rules: dict[type, LayerRule]) -> None:
    """Hand the declared layer rules to the tracer, which reads them while tracing."""
    from pat_ray.tracer.layers.declared import set_rules

    set_rules(rules)
