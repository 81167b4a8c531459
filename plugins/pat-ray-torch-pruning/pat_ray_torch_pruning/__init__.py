"""``backend: torch_pruning``, registered by import path: Torch-Pruning (and torch) are imported
only when a run uses this backend (``backend.py``), so listing plugins stays instant."""

from __future__ import annotations

from pat_ray.sdk import hookimpl


@hookimpl
def pat_ray_register_surgery_backends(register) -> None:
    register("torch_pruning", "pat_ray_torch_pruning.backend:TorchPruningSurgery")
