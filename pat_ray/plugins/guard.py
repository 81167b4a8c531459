"""A plugin object as a run calls it: its exceptions become one ``PluginFailure`` that names the
plugin and its distribution, so a failing third-party criterion is never mistaken for pat_ray's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pat_ray.errors import PluginFailure

if TYPE_CHECKING:
    from pat_ray.plugins.names import Entry


class Guarded:
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
