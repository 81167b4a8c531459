"""A plugin object as a run calls it: its exceptions become one ``PluginFailure`` that names the
plugin and its distribution, so a failing third-party criterion is never mistaken for pat_ray's."""

from __future__ import annotations

from typing import Any

from pat_ray.errors import PluginFailure


class Guarded:
    """Delegates to a plugin object; turns its exceptions into a ``PluginFailure`` naming it."""

    def __init__(self, target: Any, plugin: str) -> None:
        self._target, self._plugin = target, plugin  # "criterion 'x' from plugin 'y' (dist 1.0)"

    def _fail(self, where: str, err: Exception) -> PluginFailure:
        return PluginFailure(f"{self._plugin} raised in {where}: {type(err).__name__}: {err}")

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
