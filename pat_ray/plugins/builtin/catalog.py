"""Every built-in name, registered through the same hooks as a third-party plugin, each named
by import path: building the registry (``pat-ray plugins``, ``pat-ray config``) imports none of
the implementations, so neither torch nor torchvision until a name is used."""

from __future__ import annotations

import pat_ray
from pat_ray.plugins.builtin.torchvision_names import torchvision_model_names
from pat_ray.plugins.names import Deferred

BUILTIN = "pat_ray.plugins.builtin"


@pat_ray.hookimpl
def pat_ray_register_criteria(register) -> None:
    register("magnitude", f"{BUILTIN}.criteria.magnitude:Magnitude")
    register("bn_scale", f"{BUILTIN}.criteria.bn_scale:BNScale")
    register("taylor", f"{BUILTIN}.criteria.taylor:Taylor")


@pat_ray.hookimpl
def pat_ray_register_similarity_metrics(register) -> None:
    for name in ("structural", "structural_layers", "mask_hamming"):
        register(name, Deferred(f"{BUILTIN}.similarity:metric", (name,)))


@pat_ray.hookimpl
def pat_ray_register_surgery_backends(register) -> None:
    register("native", f"{BUILTIN}.surgery_native:NativeSurgery")


@pat_ray.hookimpl
def pat_ray_register_models(register) -> None:
    for depth in (20, 32, 44, 56, 110):
        register(f"cifar_resnet{depth}", Deferred("pat_ray.models.cifar_resnet:CifarResNet", (depth,)))
    register("vit_small_images", "pat_ray.models.vit:VisionTransformer")
    for name in torchvision_model_names():
        register(name, Deferred(f"{BUILTIN}.models:torchvision_model", (name,)))


@pat_ray.hookimpl
def pat_ray_register_datasets(register) -> None:
    for name in ("digits", "synthetic"):
        register(name, f"{BUILTIN}.datasets:{name}")
    for name in ("cifar10", "imagefolder"):
        register(name, f"{BUILTIN}.image_files:{name}")
    register("fashion_mnist", f"{BUILTIN}.idx_datasets:fashion_mnist")
    register("mnist", f"{BUILTIN}.idx_datasets:mnist")
