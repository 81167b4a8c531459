"""Plugins see one surface, ``pat_ray.sdk``: the shipped plugin distributions and the README's
plugin examples import nothing else from pat_ray, and every name the SDK lists is there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import pat_ray
import pat_ray.sdk

ROOT = Path(__file__).parents[1]
PLUGIN_SOURCES = sorted(p for p in (ROOT / "plugins").glob("*/*/**/*.py") if "tests" not in p.parts)


def pat_ray_imports(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "pat_ray"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pat_ray":
            found.add(node.module)
    return found


def test_there_are_plugin_sources_to_check():
    assert {p.parts[len(ROOT.parts) + 1] for p in PLUGIN_SOURCES} == {
        "pat-ray-example-criterion",
        "pat-ray-torch-pruning",
    }


@pytest.mark.parametrize("path", PLUGIN_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_plugin_distribution_imports_only_the_sdk(path):
    assert pat_ray_imports(path.read_text()) <= {"pat_ray.sdk"}


def test_the_readmes_plugin_examples_import_only_the_sdk():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Writing a plugin") : readme.index("## Measured results")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) >= 2
    for block in blocks:
        # the plugin itself from the SDK; a block that also uses it may call the public API (pat_ray.prune)
        assert "pat_ray.sdk" in pat_ray_imports(block) <= {"pat_ray.sdk", "pat_ray"}, block
        used = set(re.findall(r"\bpat_ray\.(\w+)", block)) - {"sdk"}
        assert used <= set(pat_ray.__all__), block


def test_every_name_the_sdk_lists_is_there():
    assert sorted(pat_ray.sdk.__all__) == sorted(set(pat_ray.sdk.__all__))
    for name in pat_ray.sdk.__all__:
        assert getattr(pat_ray.sdk, name) is not None, name
