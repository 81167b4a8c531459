"""Rules for a library's own layers and functions (torchvision's Swin attention, its
``stochastic_depth``) register once that library is imported, not when pat_ray is.

Importing torchvision takes about a second (it imports ``torch._dynamo``), which every
``pat-ray run`` of a model that is not torchvision's, and every Ray worker, would otherwise pay.
Waiting is exact, not a guess: a model can only hold a library's classes or call its functions
after that library's module has run, so when the tables are first asked about such a model the
library is in ``sys.modules`` and its rule modules are imported then. The op and layer tables
call ``register_loaded`` before every lookup; once every library has been seen it is one
truth test.
"""

from __future__ import annotations

import importlib
import sys
import threading

# A library (as ``sys.modules`` names it) -> the pat_ray modules whose decorators register its rules.
_WAITING: dict[str, tuple[str, ...]] = {
    "torchvision": ("pat_ray.tracer.layers.swin", "pat_ray.tracer.ops.torchvision_functions"),
}
_LOCK = threading.Lock()


def register_loaded() -> None:
    """Import the rule modules of every waiting library that has been imported since."""
    if not _WAITING or not any(library in sys.modules for library in _WAITING):
        return
    with _LOCK:
        for library in [name for name in _WAITING if name in sys.modules]:
            for module in _WAITING.pop(library):
                importlib.import_module(module)
