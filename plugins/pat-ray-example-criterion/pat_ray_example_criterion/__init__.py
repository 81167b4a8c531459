"""The plugin's face: one hook that registers the FPGM criterion (``fpgm.py``) by import path.
Copy this package to add your own criterion: one class with ``scores``, one hook naming it.

The class is named as ``"module:attribute"``, not imported here: pat_ray then imports it (and
torch) only when a run uses ``fpgm``, so ``pat-ray plugins`` and ``pat-ray config`` stay instant.
"""

from __future__ import annotations

from pat_ray.sdk import hookimpl


@hookimpl
def pat_ray_register_criteria(register) -> None:
    register("fpgm", "pat_ray_example_criterion.fpgm:FPGM")
