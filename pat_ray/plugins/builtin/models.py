"""Every torchvision classification model by name (the CIFAR ResNets and the small ViT are in
``pat_ray.models``)."""

from __future__ import annotations

import torchvision
from torch import nn


def torchvision_model(name: str, num_classes: int = 1000, **params) -> nn.Module:
    """Untrained (weights=None): pat_ray never downloads at run time."""
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **params)
