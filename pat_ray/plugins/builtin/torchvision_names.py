"""torchvision's classification model names without importing torchvision (and torch): read
from the list shipped beside this module when the installed torchvision is the version it was
written from, else asked of torchvision itself. Listing names is what ``pat-ray plugins`` and
``pat-ray config`` do, and importing torch would be nearly all of their time.

The shipped list is rewritten with ``python -m pat_ray.plugins.builtin.torchvision_names``;
``tests/test_registry.py`` fails when it is stale for the installed torchvision."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

NAME_LIST = Path(__file__).with_name("torchvision_models.json")


def installed_version() -> str | None:
    """torchvision's release, without a local build tag (``0.29.1+cu130`` and ``0.29.1+cpu``
    ship the same models)."""
    try:
        return version("torchvision").split("+")[0]
    except PackageNotFoundError:
        return None


def shipped_names() -> tuple[str | None, list[str]]:
    """The version the shipped list was written from, and its names."""
    shipped = json.loads(NAME_LIST.read_text())
    return shipped["torchvision"], shipped["models"]


def listed_by_torchvision() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def torchvision_model_names() -> list[str]:
    shipped_version, names = shipped_names()
    return names if shipped_version == installed_version() else listed_by_torchvision()


def write_name_list() -> None:
    """Write the list for the installed torchvision (temp file, then rename)."""
    text = json.dumps({"torchvision": installed_version(), "models": listed_by_torchvision()}, indent=1) + "\n"
    partial = NAME_LIST.with_suffix(".json.partial")
    partial.write_text(text)
    partial.replace(NAME_LIST)


if __name__ == "__main__":
    write_name_list()
