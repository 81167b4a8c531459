"""Dataset plugins read the real on-disk formats: files the tests write themselves."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import pat_ray
from _helpers import configured
from pat_ray.config import FixedStart
from pat_ray.plugins.registry import get_registry


def write_cifar10(root, per_batch: int = 8) -> None:
    """Tiny CIFAR-10 python batches, laid out and pickled exactly as the official release."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            "batch_label": name,
            "labels": rng.integers(0, 10, per_batch).tolist(),
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "filenames": [f"{name}_{i}.png" for i in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))


def write_imagefolder(root, classes=("cat", "dog", "fox"), per_class: int = 3, shape=(40, 48, 3)) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(pixels.squeeze(-1) if shape[-1] == 1 else pixels).save(folder / f"{i}.png")


def test_cifar10_reads_the_batch_format(tmp_path):
    write_cifar10(tmp_path)
    data = get_registry().create("dataset", "cifar10", root=str(tmp_path), verify_checksums=False)
    assert (len(data.train), len(data.val), data.num_classes) == (40, 8, 10)
    image, label = data.train[0]
    assert image.shape == (3, 32, 32) and 0 <= label < 10
    # the official release's checksums are verified by default: our tiny files fail them
    with pytest.raises(FileNotFoundError, match="no valid CIFAR-10 batches"):
        get_registry().create("dataset", "cifar10", root=str(tmp_path))


def test_imagefolder_reads_the_imagenet_layout(tmp_path):
    write_imagefolder(tmp_path)
    data = get_registry().create("dataset", "imagefolder", root=str(tmp_path), image_size=32)
    assert (len(data.train), len(data.val), data.num_classes) == (9, 9, 3)
    assert data.train[0][0].shape == (3, 32, 32)
    assert data.input_shape == (3, 32, 32)


def test_imagefolder_reads_its_defaults_from_the_images(tmp_path):
    write_imagefolder(tmp_path, shape=(20, 20, 1))  # small grayscale squares
    data = get_registry().create("dataset", "imagefolder", root=str(tmp_path), augment=False)
    assert data.input_shape == (1, 20, 20) and data.train[0][0].shape == (1, 20, 20)
    pixels = torch.stack([data.train[i][0] for i in range(len(data.train))])
    assert abs(float(pixels.mean())) < 0.05 and abs(float(pixels.std()) - 1) < 0.05  # normalize: auto
    plain = get_registry().create("dataset", "imagefolder", root=str(tmp_path), normalize="none", image_size=16)
    assert plain.input_shape == (1, 16, 16) and 0 <= float(plain.val[0][0].min()) <= float(plain.val[0][0].max()) <= 1
    with pytest.raises(ValueError, match="normalize is auto, imagenet, none"):
        get_registry().create("dataset", "imagefolder", root=str(tmp_path), normalize="cifar")


def test_rgb_images_refuse_a_one_channel_model_naming_both(tmp_path):
    from click.testing import CliRunner

    from pat_ray.cli import main

    write_imagefolder(tmp_path / "images", shape=(16, 16, 3))
    args = [
        "validate",
        f"data={{name: imagefolder, params: {{root: {tmp_path / 'images'}}}}}",
        "model.params.in_channels=1",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "reads 1 input channels" in result.output and "the data gives 3" in result.output


def test_imagefolder_missing_split_names_the_path(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="val"):
        get_registry().create("dataset", "imagefolder", root=str(tmp_path))


def test_synthetic_has_the_requested_shape():
    data = get_registry().create("dataset", "synthetic", num_samples=16, num_classes=4, shape=(3, 8, 8))
    x, y = data.train[0]
    assert x.shape == (3, 8, 8) and 0 <= int(y) < 4 and len(data.train) == 16


def test_pipeline_runs_on_cifar10_files(tmp_path):
    write_cifar10(tmp_path / "data")
    cfg = configured(
        output_dir=tmp_path / "runs",
        model={"params": {}},
        data={
            "name": "cifar10",
            "batch_size": 8,
            "params": {"root": str(tmp_path / "data"), "verify_checksums": False},
        },
        training={"epochs": 2},
        start=FixedStart(epoch=1),
        pruning={"steps": 1, "interval": 3},
    )
    result = pat_ray.run(cfg, local=True, quiet=True)
    assert result.trigger_epoch == 1 and abs(result.flops_kept - 0.5) < 0.02
    assert torch.isfinite(torch.tensor(result.history[-1].train_loss))
