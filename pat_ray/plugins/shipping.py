"""In-process plugins on their way to Ray workers: a plugin module travels as its source (the
file, or its top-level package, zipped) and is imported from a folder of the worker's own; any
other plugin object travels as itself. A worker on another node has neither the driver's files
nor its ``sys.path``, and the driver's file may be gone by the time a run starts."""

from __future__ import annotations

import importlib
import inspect
import io
import sys
import tempfile
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pat_ray.errors import PluginError


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


def shippable(name: str, plugin: object) -> ShippedPlugin:
    if not inspect.ismodule(plugin):
        return ShippedPlugin(name, instance=plugin)
    if getattr(plugin, "__file__", None) is None:
        return ShippedPlugin(name, module=plugin.__name__)  # fine in this process; refused when shipped
    return ShippedPlugin(name, module=plugin.__name__, archive=module_archive(name, plugin))


def module_archive(name: str, module: types.ModuleType) -> bytes:
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


def import_shipped(shipped: ShippedPlugin) -> types.ModuleType:
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
