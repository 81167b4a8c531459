"""The process's plugins: the pluggy manager, the name registry built from it (``names.py``),
plugins registered in this process and handed on to Ray workers (``shipping.py``), and the
layer rules handed to the tracer.

Built-ins in ``pat_ray.plugins.builtin`` register through the same hooks as third-party
plugins, which are discovered through the ``pat_ray`` entry-point group (set
``PAT_RAY_DISABLE_PLUGIN_AUTOLOAD=1`` to skip them).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from typing import TYPE_CHECKING

import pluggy

from pat_ray.errors import PluginError
from pat_ray.plugins import hookspecs
from pat_ray.plugins.names import Registry, collect, origin
from pat_ray.plugins.shipping import ShippedPlugin, import_shipped, shippable

if TYPE_CHECKING:
    from pat_ray.tracer.layers.declared import LayerRule

DEFAULT_PLUGINS = ("pat_ray.plugins.builtin.catalog",)
AUTOLOAD_SWITCH = "PAT_RAY_DISABLE_PLUGIN_AUTOLOAD"


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
        dist = dists.get(id(err.plugin)) or origin(err.plugin)
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
        raise PluginError(f"plugin {name or origin(plugin)!r}: {err}") from None
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
        _in_process[shipped_name] = (plugin, shippable(shipped_name, plugin))


def shipped_plugins() -> list[ShippedPlugin]:
    """The plugins this process registered with :func:`register_plugin` and still holds,
    ready to hand to Ray workers, which otherwise see only built-ins and entry points."""
    manager = get_plugin_manager()
    shipped = [shipped for name, (plugin, shipped) in _in_process.items() if manager.get_plugin(name) is plugin]
    for plugin in shipped:
        if plugin.module is not None and not plugin.source:
            raise PluginError(f"plugin {plugin.name!r} is a module without a file; Ray workers cannot load it")
    return shipped


def plugin_sources() -> list[str]:
    """The copies of the in-process plugin modules' sources, for Ray's ``py_modules``."""
    return sorted({plugin.source for plugin in shipped_plugins() if plugin.source})


def install_shipped(plugins: list[ShippedPlugin]) -> None:
    """Register, in a Ray worker, the plugins its driver registered in-process (once each)."""
    manager = get_plugin_manager()
    for shipped in plugins:
        if manager.get_plugin(shipped.name) is not None:
            continue  # a reused worker process, or the driver itself
        plugin = shipped.instance
        if shipped.module is not None:
            plugin = import_shipped(shipped)
        register_plugin(plugin, name=shipped.name)


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
    """Hand the declared layer rules to the tracer, which reads them while tracing (a tracer
    not imported yet has none, so listing names without rules never imports it, nor torch)."""
    if not rules and "pat_ray.tracer.layers.declared" not in sys.modules:
        return
    from pat_ray.tracer.layers.declared import set_rules

    set_rules(rules)
