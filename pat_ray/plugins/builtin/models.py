"""Built-in models: the CIFAR ResNets, a small ViT (``vit_small_images``) and every torchvision
classification model by name."""

from __future__ import annotations

from functools import partial

import torchvision
from torch import nn

import pat_ray
from pat_ray.models.cifar_resnet import CifarResNet
from pat_ray.models.vit import VisionTransformer


def _torchvision_model(name: str, num_classes: int = 1000, **params) -> nn.Module:
    """Untrained (weights=None): pat_ray never downloads at run time."""
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **params)


@pat_ray.hookimpl
def pat_ray_register_models(register) -> None:
    for depth in (20, 32, 44, 56, 110):
        register(f"cifar_resnet{depth}", partial(CifarResNet, depth))
    register("vit_small_images", VisionTransformer)
    for name in torchvision.models.list_models(module=torchvision.models):
        register(name, partial(_torchvision_model, name))
