"""MNIST and Fashion-MNIST from the four standard idx files (gzipped or not); no download.

Fashion-MNIST comes offline from Debian's package ``dataset-fashion-mnist``, whose folder
is the default ``root``. Optional class-balanced subsets and a seeded validation split let
a CPU study size the data without changing the task: ``train_per_class`` images of each
class train, ``val_per_class`` others of each class validate (default: the 10,000 test
images, optionally a balanced ``test_per_class`` subset of them).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset
from torchvision.transforms import v2

from pat_ray.core.data import DataBundle
from pat_ray.plugins.builtin.idx_format import check_labels, check_pair, read_idx

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian: apt-get install dataset-fashion-mnist
MNIST_ROOT = "/usr/share/datasets/mnist"
ROOTS = {"fashion_mnist": FASHION_ROOT, "mnist": MNIST_ROOT}
IMAGE_SHAPE, CLASSES = (28, 28), 10
NORMALIZATION = {"fashion_mnist": (0.2860, 0.3530), "mnist": (0.1307, 0.3081)}  # training-set pixel mean, std
HOW_TO_GET = {
    "fashion_mnist": "install Debian's package dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
    "mnist": "download the four MNIST idx files",
}


def fashion_mnist(
    root: str = FASHION_ROOT,
    train_per_class: int | None = None,
    val_per_class: int | None = None,
    test_per_class: int | None = None,
    augment: bool = False,
    seed: int = 0,
) -> DataBundle:
    """Fashion-MNIST (60,000 train / 10,000 test 28x28 grayscale images of 10 kinds of clothing)."""
    return _idx_bundle("fashion_mnist", root, train_per_class, val_per_class, test_per_class, augment, seed)


def mnist(
    root: str = MNIST_ROOT,
    train_per_class: int | None = None,
    val_per_class: int | None = None,
    test_per_class: int | None = None,
    augment: bool = False,
    seed: int = 0,
) -> DataBundle:
    """MNIST handwritten digits, in the same idx format and with the same options as Fashion-MNIST."""
    return _idx_bundle("mnist", root, train_per_class, val_per_class, test_per_class, augment, seed)


def check_files(name: str, root: str) -> dict[str, Path]:
    """The path of each of the four files under ``root``; FileNotFoundError saying how to get them."""
    folder = Path(root).expanduser()
    found, missing = {}, []
    for key, stem in FILES.items():
        path = next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)
        if path is None:
            missing.append(stem)
        else:
            found[key] = path
    if missing:
        where = (
            f"{str(folder)!r} lacks {missing}"
            if folder.is_dir()
            else f"{str(folder)!r} is a file, not a folder"
            if folder.exists()
            else f"{str(folder)!r} does not exist"
        )
        raise FileNotFoundError(
            f"{name}: {where}; {HOW_TO_GET[name]}, or set data.params.root to any folder holding "
            f"the four standard files ({', '.join(FILES.values())}, gzipped or not)"
        )
    return found


def _idx_bundle(name, root, train_per_class, val_per_class, test_per_class, augment, seed) -> DataBundle:
    for field, value in (("train_per_class", train_per_class), ("val_per_class", val_per_class)):
        if value is not None and value < 1:
            raise ValueError(f"{name}: {field} must be >= 1, got {value}")
    files = check_files(name, root)
    train_images, train_labels = _read_pair(files["train_images"], files["train_labels"])
    gen = torch.Generator().manual_seed(seed)
    train_idx, val_idx = _balanced_split(train_labels, train_per_class, val_per_class, gen)
    if val_per_class is not None:
        val_images, val_labels = train_images[val_idx], train_labels[val_idx]
    else:
        val_images, val_labels = _read_pair(files["test_images"], files["test_labels"])
        if test_per_class is not None:
            keep, _ = _balanced_split(val_labels, test_per_class, None, gen)
            val_images, val_labels = val_images[keep], val_labels[keep]
    mean, std = NORMALIZATION[name]
    train_x, val_x = _normalized(train_images[train_idx], mean, std), _normalized(val_images, mean, std)
    train: Dataset = TensorDataset(train_x, train_labels[train_idx])
    if augment:
        train = _Augmented(train_x, train_labels[train_idx])
    return DataBundle(train, TensorDataset(val_x, val_labels), num_classes=10, input_shape=(1, 28, 28))


def _read_pair(images: Path, labels: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels, checked against each other (counts, image size, label range)."""
    check_pair(images, labels, IMAGE_SHAPE)
    image_data, label_data = read_idx(images, 3), read_idx(labels, 1)
    check_labels(labels, label_data, CLASSES)
    return image_data, label_data.long()


def _balanced_split(
    labels: torch.Tensor, first: int | None, second: int | None, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, a seeded shuffle: the first ``first`` indices (all but ``second`` when None),
    then the next ``second``. Returned sorted, so class order does not leak into batches."""
    picked_first, picked_second = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_second = second or 0
        n_first = len(idx) - n_second if first is None else first
        if n_first + n_second > len(idx):
            raise ValueError(f"class {c} has {len(idx)} images; {n_first} + {n_second} were asked for")
        picked_first.append(idx[:n_first])
        picked_second.append(idx[n_first : n_first + n_second])
    return torch.cat(picked_first).sort().values, torch.cat(picked_second).sort().values


def _normalized(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    return ((images.float() / 255.0 - mean) / std).unsqueeze(1)


class _Augmented(Dataset):
    """Random 2-pixel shifts and horizontal flips, per sample, on the normalized tensors."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        self.transform = v2.Compose([v2.RandomCrop(28, padding=2), v2.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), self.labels[i]


def _check(name: str):
    def check(root: str | None = None, **_params: object) -> None:
        """The four files exist and their headers agree (milliseconds: no data is read)."""
        files = check_files(name, root or ROOTS[name])
        check_pair(files["train_images"], files["train_labels"], IMAGE_SHAPE)
        check_pair(files["test_images"], files["test_labels"], IMAGE_SHAPE)

    return check


fashion_mnist.check = _check("fashion_mnist")  # type: ignore[attr-defined]
mnist.check = _check("mnist")  # type: ignore[attr-defined]
