"""A user's own code named by import path (``"my_pkg.nets:SmallCNN"``), as a config's
``model.target`` / ``data.target`` or a checkpoint's record of how its model was made.

Reading a file must never run code the user did not choose: a config or checkpoint from
elsewhere could name ``os:system``. So a module is imported only when the user trusted it: with
``pat_ray.trust("my_pkg")`` (the CLI's ``--trust my_pkg``), ``PAT_RAY_TRUST=my_pkg,other`` in the
environment, or by handing pat_ray the class or function itself (its module is then trusted in
this process). Trusting a package trusts its submodules. Modules are found on ``sys.path`` and
in the current folder (a command-line tool's ``sys.path`` does not hold it).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from pat_ray.errors import TargetError, UntrustedCodeError

TRUST_ENV = "PAT_RAY_TRUST"
_trusted: set[str] = set()


def trust(*modules: str) -> None:
    """Allow pat_ray to import these modules (and their submodules) in this process, for the
    targets of configs and checkpoints. Ray workers started from this process trust them too."""
    for module in modules:
        name = module.strip()
        if not name or any(not part.isidentifier() for part in name.split(".")):
            raise TargetError(f"cannot trust {module!r}: give a module name such as my_pkg or my_pkg.nets")
        _trusted.add(name)


@contextmanager
def trusting(modules: str | Iterable[str]) -> Iterator[None]:
    """These modules trusted for the block only (``load_checkpoint(..., trust=[...])``); one
    name may be given as a string."""
    names = [modules] if isinstance(modules, str) else list(modules)
    added = {m for m in names if m not in _trusted}
    trust(*added)
    try:
        yield
    finally:
        _trusted.difference_update(added)


def trusted_modules() -> frozenset[str]:
    """What this process trusts: ``trust()`` calls and ``PAT_RAY_TRUST``."""
    from_env = {name.strip() for name in os.environ.get(TRUST_ENV, "").split(",") if name.strip()}
    return frozenset(_trusted | from_env)


def is_trusted(module: str, also: Iterable[str] = ()) -> bool:
    return any(module == name or module.startswith(name + ".") for name in (*trusted_modules(), *also))


def split_target(target: str) -> tuple[str, str]:
    """``"pkg.mod:Name"`` (or ``"pkg.mod.Name"``) as ``("pkg.mod", "Name")``."""
    module, sep, attribute = target.partition(":")
    if not sep:
        module, _, attribute = target.rpartition(".")
    names = [*module.split("."), *attribute.split(".")]
    if not module or not attribute or not all(name.isidentifier() for name in names):
        raise TargetError(f"{target!r} is not an import path: write module:name, e.g. my_pkg.nets:SmallCNN")
    return module, attribute


def resolve(target: str, what: str, also_trusted: Iterable[str] = ()) -> Callable[..., Any]:
    """The callable ``target`` names, imported only from a trusted module; ``what`` (the config
    field, the checkpoint) starts every error, which is one line."""
    try:
        module_name, attribute = split_target(target)
    except TargetError as err:
        raise TargetError(f"{what}: {err}") from None
    if not is_trusted(module_name, also_trusted):
        top = module_name.split(".")[0]
        raise UntrustedCodeError(
            f"{what}: {target!r} is in module {module_name!r}, which pat_ray imports only when you trust it: "
            f"add --trust {top} (Python: pat_ray.trust({top!r}); or PAT_RAY_TRUST={top})"
        )
    module = _import(module_name, target, what)
    found: Any = module
    for name in attribute.split("."):
        if not hasattr(found, name):
            raise TargetError(f"{what}: module {module_name!r} has no {attribute!r} (from {target!r})")
        found = getattr(found, name)
    if not callable(found):
        raise TargetError(f"{what}: {target!r} is a {type(found).__name__}, not a class or function")
    return found


def _import(module_name: str, target: str, what: str) -> Any:
    here = os.getcwd()
    if here not in sys.path:
        sys.path.append(here)  # after everything else: the current folder never shadows a package
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise TargetError(f"{what}: cannot import {module_name!r} for {target!r} ({err})") from None
    except Exception as err:
        raise TargetError(
            f"{what}: importing {module_name!r} for {target!r} raised {type(err).__name__}: {err}"
        ) from None


def target_of(factory: Any) -> str | None:
    """The import path that gives ``factory`` back in another process (None: it has none, e.g. a
    class defined in ``__main__``, a notebook or inside a function)."""
    module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    found: Any = sys.modules.get(module)
    for name in qualname.split("."):
        found = getattr(found, name, None)
    return f"{module}:{qualname}" if found is factory else None
