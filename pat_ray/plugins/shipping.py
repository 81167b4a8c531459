"""In-process plugins on their way to Ray workers. A plugin module's source (the file, or the
top-level package it belongs to) is copied when it is registered into a folder of this process,
and that copy goes to every node with Ray's ``py_modules`` runtime environment, as Ray documents
for code a cluster's nodes do not have: a worker then imports the plugin by its name. Copied at
registration, not when a run starts: the driver's file may be gone (or changed) by then. Any
other plugin object travels as itself (Ray pickles it)."""

from __future__ import annotations

import importlib
import inspect
import shutil
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

from pat_ray.errors import PluginError


@dataclass(frozen=True)
class ShippedPlugin:
    """An in-process plugin as it travels to a Ray worker: a module by its import name, with the
    copy of its source that ``py_modules`` ships (``source``: a folder or a ``.py`` file of this
    process); any other object as itself."""

    name: str
    module: str | None = None
    source: str = ""
    instance: object = None


SHIP_LIMIT = 64 * 2**20  # a plugin package larger than this is a packaging mistake, not a plugin
_copies: dict[str, Path] = {}  # top-level name -> its copy, so two plugins of one package ship it once


def shippable(name: str, plugin: object) -> ShippedPlugin:
    if not inspect.ismodule(plugin):
        return ShippedPlugin(name, instance=plugin)
    if getattr(plugin, "__file__", None) is None:
        return ShippedPlugin(name, module=plugin.__name__)  # fine in this process; refused when shipped
    return ShippedPlugin(name, module=plugin.__name__, source=str(source_copy(name, plugin)))


def source_copy(name: str, module: types.ModuleType) -> Path:
    """A copy of the module's source in a folder of this process: its file, or the top-level
    package holding it (what ``py_modules`` takes, and what the worker imports it from)."""
    parts = module.__name__.split(".")
    source = Path(module.__file__)  # type: ignore[arg-type]
    is_package = source.name == "__init__.py"
    original = source if len(parts) == 1 and not is_package else source.parents[len(parts) - 1 + is_package] / parts[0]
    if parts[0] in _copies:
        return _copies[parts[0]]
    size = sum(f.stat().st_size for f in original.rglob("*.py")) if original.is_dir() else original.stat().st_size
    if size > SHIP_LIMIT:
        raise PluginError(f"plugin {name!r}: its package {original} is over {SHIP_LIMIT >> 20} MiB of source")
    copy = Path(tempfile.mkdtemp(prefix=f"pat_ray_plugin_{name}_")) / original.name
    if original.is_dir():
        shutil.copytree(original, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        shutil.copy2(original, copy)
    _copies[parts[0]] = copy
    return copy


def import_shipped(shipped: ShippedPlugin) -> types.ModuleType:
    """The plugin module, imported by name in a worker whose ``py_modules`` hold its copy."""
    try:
        return importlib.import_module(shipped.module)  # type: ignore[arg-type]
    except ImportError as err:
        raise PluginError(
            f"plugin {shipped.name!r}: module {shipped.module!r} is not importable on this Ray worker ({err}); "
            "pat_ray ships it with py_modules when it starts Ray, a Train run or an oracle sweep: in a Ray you "
            "started yourself, pass runtime_env={'py_modules': [...]} to ray.init, or install the plugin"
        ) from None
    except Exception as err:
        raise PluginError(f"plugin {shipped.name!r}: its shipped source failed to import here: {err!r}") from None
