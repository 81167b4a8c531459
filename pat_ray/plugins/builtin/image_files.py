"""Built-in datasets read from files the user already has: CIFAR-10's python batches and an
ImageNet-style ImageFolder. Nothing downloads: a missing ``root`` fails with the path in the
message.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision import datasets, transforms

from pat_ray.core.data import DataBundle

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _existing(root: str | Path, what: str) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what}: data root {str(path)!r} does not exist")
    return path


class _UncheckedCIFAR10(datasets.CIFAR10):
    """torchvision's CIFAR-10 reader without the md5 check (re-packed or subset batches)."""

    train_list = [[name, None] for name, _ in datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in datasets.CIFAR10.test_list]
    meta = {**datasets.CIFAR10.meta, "md5": None}


def cifar10(root: str, augment: bool = True, verify_checksums: bool = True) -> DataBundle:
    """CIFAR-10 from the python batches under ``root/cifar-10-batches-py/``; no download.

    ``verify_checksums: false`` accepts batch files that differ from the official release
    (a subset, a re-pack) as long as they are in its format.
    """
    base = _existing(root, "cifar10")
    reader = datasets.CIFAR10 if verify_checksums else _UncheckedCIFAR10
    normalize = transforms.Normalize(CIFAR_MEAN, CIFAR_STD)
    train_tf = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    try:
        train = reader(
            base,
            train=True,
            download=False,
            transform=transforms.Compose([*train_tf, transforms.ToTensor(), normalize]),
        )
        val = reader(
            base, train=False, download=False, transform=transforms.Compose([transforms.ToTensor(), normalize])
        )
    except RuntimeError as err:
        raise FileNotFoundError(
            f"cifar10: no valid CIFAR-10 batches under {str(base / 'cifar-10-batches-py')!r} ({err})"
        ) from err
    return DataBundle(train, val, num_classes=len(train.classes), input_shape=(3, 32, 32))


def imagefolder(
    root: str,
    image_size: int | None = None,
    resize: int | None = None,
    normalize: str | dict[str, list[float]] = "auto",
    augment: bool = True,
    channels: int | None = None,
) -> DataBundle:
    """ImageNet layout: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``.

    What is not given is read from the images (a sample of ``SAMPLE`` training files):
    ``image_size``, their side when they all share one square size (else 224); ``channels``, 1
    when they are all grayscale (else 3); ``normalize: auto``, their per-channel mean and std
    (``imagenet``: ImageNet's; ``none``; or ``{mean: [...], std: [...]}``). ``augment``: random
    resized crops and flips for training; ``resize``: the validation images' short side before
    the center crop (default: ``image_size`` * 256 / 224)."""
    base = _existing(root, "imagefolder")
    for split in ("train", "val"):
        _existing(base / split, f"imagefolder {split} split")
    looked = datasets.ImageFolder(base / "train")
    sizes, modes = _sampled(looked)
    image_size = image_size or (sizes[0][0] if len(set(sizes)) == 1 and sizes[0][0] == sizes[0][1] else 224)
    channels = channels or (1 if set(modes) == {"L"} else 3)
    mode = transforms.Grayscale(1) if channels == 1 else transforms.Lambda(_rgb)
    shape = [mode, transforms.Resize(resize or int(image_size * 256 / 224)), transforms.CenterCrop(image_size)]
    stats = _normalization(normalize, looked, transforms.Compose([*shape, transforms.ToTensor()]), channels)
    scale = [transforms.ToTensor(), *([transforms.Normalize(*stats)] if stats else [])]
    crop = [transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()] if augment else shape[1:]
    train = datasets.ImageFolder(base / "train", transforms.Compose([mode, *crop, *scale]))
    val = datasets.ImageFolder(base / "val", transforms.Compose([*shape, *scale]))
    if train.classes != val.classes:
        raise ValueError(f"imagefolder: train and val class folders differ under {str(base)!r}")
    return DataBundle(train, val, num_classes=len(train.classes), input_shape=(channels, image_size, image_size))


SAMPLE = 64  # training images imagefolder opens to read sizes, modes and statistics


def _rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def _sampled(folder: datasets.ImageFolder) -> tuple[list[tuple[int, int]], list[str]]:
    step = max(1, len(folder.samples) // SAMPLE)
    sizes, modes = [], []
    for path, _ in folder.samples[::step][:SAMPLE]:
        with Image.open(path) as image:
            sizes.append(image.size)
            modes.append(image.mode)
    if not sizes:
        raise FileNotFoundError(f"imagefolder: no images under {folder.root!r}")
    return sizes, modes


def _normalization(
    normalize: str | dict[str, list[float]], folder: datasets.ImageFolder, load, channels: int
) -> tuple[list[float], list[float]] | None:
    if isinstance(normalize, dict):
        return list(normalize["mean"]), list(normalize["std"])
    if normalize == "none":
        return None
    if normalize == "imagenet":
        return (list(IMAGENET_MEAN), list(IMAGENET_STD)) if channels == 3 else ([0.449], [0.226])
    if normalize != "auto":
        allowed = "auto, imagenet, none or {mean: [...], std: [...]}"
        raise ValueError(f"imagefolder: normalize is {allowed}, not {normalize!r}")
    step = max(1, len(folder.samples) // SAMPLE)
    pixels = torch.stack([load(folder.loader(path)) for path, _ in folder.samples[::step][:SAMPLE]])
    return pixels.mean((0, 2, 3)).tolist(), pixels.std((0, 2, 3)).clamp_min(1e-6).tolist()
