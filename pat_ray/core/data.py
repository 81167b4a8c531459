"""The dataset contract: a factory returns train/val datasets and what the model needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset


@dataclass(frozen=True)
class DataBundle:
    """What a registered dataset factory returns.

    ``input_shape`` is one sample's (C, H, W): the model is traced with it and the training
    FLOPs are counted for it. Items are ``(image_tensor, int_label)``.
    """

    train: Dataset[Any]
    val: Dataset[Any]
    num_classes: int
    input_shape: tuple[int, ...]
