"""A user's driver for tests/test_multinode.py: registers a criterion plugin from a module file,
deletes that file (so only what Ray ships can reach the workers), then runs the CLI's
``pat-ray ARGS...``. Usage: python _multinode_driver.py PLUGIN_FILE ARGS..."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

from pat_ray.cli import main
from pat_ray.plugins.registry import register_plugin

plugin = Path(sys.argv[1])
sys.path.insert(0, str(plugin.parent))
register_plugin(importlib.import_module(plugin.stem), name="shipped-criterion")
plugin.unlink()
shutil.rmtree(plugin.parent / "__pycache__", ignore_errors=True)
sys.path.pop(0)
sys.argv = ["pat-ray", *sys.argv[2:]]
main()
