"""Data of your own, as pat_ray meets it: a factory returning ``(train, val)`` datasets.

The number of classes and the input shape are read from the datasets (``data.num_classes`` and
``data.input_shape`` set them when the data cannot say).
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset


def make(val_share: float = 0.2, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's 8x8 digits as two TensorDatasets, shuffled with ``seed``."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(raw.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = int(len(order) * (1 - val_share))
    train, val = order[:cut], order[cut:]
    return TensorDataset(images[train], labels[train]), TensorDataset(images[val], labels[val])
