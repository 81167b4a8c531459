"""Built-in datasets held in memory: digits (the embedded default) and synthetic.

Nothing downloads: digits ships with scikit-learn. Neither imports torchvision (a second of
start-up in every run and Ray worker); the file readers are in ``image_files.py``.
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from pat_ray.core.data import DataBundle


def digits(val_fraction: float = 0.2, seed: int = 0) -> DataBundle:
    """scikit-learn's 1,797 real 8x8 handwritten digits, split per class (stratified)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    raw = load_digits()
    images = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(raw.target, dtype=torch.long)
    train_idx, val_idx = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=val_fraction,
        random_state=seed,
        stratify=raw.target,
    )
    mean, std = images[train_idx].mean(), images[train_idx].std()
    images = (images - mean) / std
    return DataBundle(
        train=TensorDataset(images[train_idx], labels[train_idx]),
        val=TensorDataset(images[val_idx], labels[val_idx]),
        num_classes=10,
        input_shape=(1, 8, 8),
    )


def synthetic(
    num_samples: int = 512,
    num_classes: int = 10,
    shape: tuple[int, ...] = (3, 32, 32),
    seed: int = 0,
) -> DataBundle:
    """Random images with random labels: shape-only data for speed benchmarks."""
    gen = torch.Generator().manual_seed(seed)

    def make(n):
        return TensorDataset(
            torch.randn(n, *shape, generator=gen),
            torch.randint(0, num_classes, (n,), generator=gen),
        )

    return DataBundle(make(num_samples), make(max(1, num_samples // 4)), num_classes, tuple(shape))
