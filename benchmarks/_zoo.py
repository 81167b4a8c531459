"""The torchvision classification CNNs the tracer benchmarks run on, and how to build each."""

from __future__ import annotations

import torch
import torchvision

# Too slow to prune repeatedly at 224 px on a 2-core CPU: measured at 64 px (a FLOPs budget is a ratio).
LARGE = ("efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_l", "efficientnet_v2_m",
         "regnet_y_128", "regnet_y_32", "regnet_y_16", "vgg16", "vgg19")  # fmt: skip


def every_cnn() -> list[str]:
    """Every classification builder but the transformers (ViT, Swin, MaxViT)."""
    return [
        name
        for name in torchvision.models.list_models(module=torchvision.models)
        if not name.startswith(("vit", "swin", "maxvit"))
    ]


def every_classifier() -> list[str]:
    """Every classification builder, the transformers (ViT, Swin, MaxViT) included."""
    return torchvision.models.list_models(module=torchvision.models)


def input_size(name: str) -> int:
    return 299 if "inception" in name else 64 if name.startswith(LARGE) else 224


def build(name: str, num_classes: int = 1000) -> torch.nn.Module:
    """The untrained model, seeded; GoogLeNet / Inception without their auxiliary heads."""
    torch.manual_seed(0)
    extra = {"aux_logits": False, "init_weights": False} if name in ("inception_v3", "googlenet") else {}
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **extra)
