"""A user's driver for tests/test_multinode.py: registers a criterion plugin from a module file,
deletes that file (so only what Ray ships can reach the workers), then runs the CLI's
``pat-ray ARGS...``; the package of the user's own model (``USER_CODE``, on ``PYTHONPATH``) is
deleted once Ray has started, after pat_ray has handed it to Ray's ``py_modules``.
Usage: python _multinode_driver.py PLUGIN_FILE ARGS..."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path

from pat_ray.cli import main
from pat_ray.distributed import train
from pat_ray.plugins.registry import register_plugin

plugin = Path(sys.argv[1])
sys.path.insert(0, str(plugin.parent))
register_plugin(importlib.import_module(plugin.stem), name="shipped-criterion")
plugin.unlink()
shutil.rmtree(plugin.parent / "__pycache__", ignore_errors=True)
sys.path.pop(0)

start_ray = train.start_ray


def start_ray_then_delete_the_users_code(py_modules=None):
    start_ray(py_modules)
    shutil.rmtree(os.environ["USER_CODE"])  # from here on, only Ray's copy exists


train.start_ray = start_ray_then_delete_the_users_code
sys.argv = ["pat-ray", *sys.argv[2:]]
main()
