"""MNIST / Fashion-MNIST: the real Debian files when installed, and small idx files written here."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from pat_ray.cli import main
from pat_ray.plugins.builtin.idx_datasets import FASHION_ROOT, FILES, check_files, fashion_mnist, mnist


def write_idx(folder: Path, per_class: int, test_per_class: int, gz: bool) -> None:
    """The four files in the idx format (magic, dims, uint8 data), as the official release."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", per_class), ("test", test_per_class)):
        labels = torch.arange(10).repeat_interleave(n)
        labels = labels[torch.randperm(len(labels), generator=gen)]
        noise = torch.randint(0, 5, (len(labels), 28, 28), generator=gen)
        images = (labels[:, None, None] * 25 + noise).to(torch.uint8)
        stem = "train" if split == "train" else "t10k"
        image_header = struct.pack(">IIII", 0x0803, len(labels), 28, 28)
        label_header = struct.pack(">II", 0x0801, len(labels))
        blobs = {
            f"{stem}-images-idx3-ubyte": image_header + images.numpy().tobytes(),
            f"{stem}-labels-idx1-ubyte": label_header + labels.to(torch.uint8).numpy().tobytes(),
        }
        for name, blob in blobs.items():
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (folder / name).write_bytes(blob)


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_reads_the_idx_format_gzipped_or_not(tmp_path, gz):
    write_idx(tmp_path, per_class=12, test_per_class=3, gz=gz)
    bundle = mnist(root=str(tmp_path))
    assert len(bundle.train) == 120 and len(bundle.val) == 30
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    images, labels = bundle.train.tensors
    assert images.shape == (120, 1, 28, 28) and labels.bincount().tolist() == [12] * 10
    # the labels were written into the pixels: reading kept image i with label i
    raw = (images * 0.3081 + 0.1307) * 255
    assert torch.allclose((raw.mean((1, 2, 3)) / 25).floor(), labels.float(), atol=0)


def test_balanced_subsets_and_a_seeded_validation_split(tmp_path):
    write_idx(tmp_path, per_class=12, test_per_class=3, gz=True)
    bundle = fashion_mnist(root=str(tmp_path), train_per_class=5, val_per_class=4, seed=1)
    train_x, train_y = bundle.train.tensors
    val_x, val_y = bundle.val.tensors
    assert train_y.bincount().tolist() == [5] * 10 and val_y.bincount().tolist() == [4] * 10
    pairs = {tuple(x.flatten()[:50].tolist()) for x in train_x}
    assert not any(tuple(x.flatten()[:50].tolist()) in pairs for x in val_x)  # disjoint
    again = fashion_mnist(root=str(tmp_path), train_per_class=5, val_per_class=4, seed=1)
    assert torch.equal(again.train.tensors[0], train_x)
    other = fashion_mnist(root=str(tmp_path), train_per_class=5, val_per_class=4, seed=2)
    assert not torch.equal(other.train.tensors[0], train_x)
    tested = fashion_mnist(root=str(tmp_path), train_per_class=5, test_per_class=2)
    assert tested.val.tensors[1].bincount().tolist() == [2] * 10


def test_asking_for_more_images_than_a_class_has_is_an_error(tmp_path):
    write_idx(tmp_path, per_class=4, test_per_class=1, gz=False)
    with pytest.raises(ValueError, match="class 0 has 4 images"):
        mnist(root=str(tmp_path), train_per_class=3, val_per_class=2)


def test_augmentation_keeps_shapes_and_labels(tmp_path):
    write_idx(tmp_path, per_class=2, test_per_class=1, gz=False)
    bundle = mnist(root=str(tmp_path), augment=True)
    image, label = bundle.train[0]
    assert image.shape == (1, 28, 28) and int(label) in range(10)


def test_missing_files_are_a_validate_error_naming_the_folder_and_the_package(tmp_path):
    (tmp_path / FILES["train_images"]).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        check_files("fashion_mnist", str(tmp_path))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data": {"name": "fashion_mnist", "params": {"root": str(tmp_path)}}}))
    result = CliRunner().invoke(main, ["validate", str(config)])
    assert result.exit_code == 2 and str(tmp_path) in result.output and "dataset-fashion-mnist" in result.output
    assert "train-labels-idx1-ubyte" in result.output and "Traceback" not in result.output


@pytest.mark.skipif(
    not Path(FASHION_ROOT).is_dir(), reason=f"{FASHION_ROOT} absent: apt-get install dataset-fashion-mnist"
)
def test_the_real_fashion_mnist_files():
    bundle = fashion_mnist()
    train_x, train_y = bundle.train.tensors
    val_x, val_y = bundle.val.tensors
    assert train_x.shape == (60000, 1, 28, 28) and val_x.shape == (10000, 1, 28, 28)
    assert train_y.bincount().tolist() == [6000] * 10 and val_y.bincount().tolist() == [1000] * 10
    pixels = train_x * 0.3530 + 0.2860  # back to [0, 1]
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6 and pixels.max() > 0.99
    assert abs(train_x.mean().item()) < 0.01 and abs(train_x.std().item() - 1) < 0.01  # the constants fit


def _damage(folder: Path, how: str) -> str:
    """Damage one of the four files the way ``how`` says; returns the damaged file's name."""
    name = "train-images-idx3-ubyte.gz"
    path = folder / name
    blob = gzip.decompress(path.read_bytes())
    if how == "truncated gzip":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif how == "not gzip":
        path.write_bytes(blob)  # plain bytes under a .gz name
    elif how == "wrong magic":
        path.write_bytes(gzip.compress(struct.pack(">I", 0x0A0B0C0D) + blob[4:]))
    elif how == "wrong dimensions":
        path.write_bytes(gzip.compress(struct.pack(">II", 0x0802, 5) + blob[8:]))
    elif how == "fewer labels":
        name = "train-labels-idx1-ubyte.gz"
        labels = gzip.decompress((folder / name).read_bytes())
        count = struct.unpack(">I", labels[4:8])[0] - 3
        (folder / name).write_bytes(gzip.compress(labels[:4] + struct.pack(">I", count) + labels[8 : 8 + count]))
    elif how == "extra bytes":
        path.write_bytes(gzip.compress(blob + b"\0" * 7))
    return name


DAMAGE = {  # how -> what the one line says
    "truncated gzip": "truncated or damaged",
    "not gzip": "is not a gzip file",
    "wrong magic": "is not an idx file",
    "wrong dimensions": "dimensions",
    "fewer labels": "holds 117 labels for the 120 images",
    "extra bytes": "truncated or damaged",  # the size trailer disagrees with the header
}


@pytest.mark.parametrize("how", list(DAMAGE))
def test_damaged_files_fail_validate_in_one_line_naming_the_file(tmp_path, how):
    write_idx(tmp_path / "data", per_class=12, test_per_class=3, gz=True)
    name = _damage(tmp_path / "data", how)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"name": "mnist", "params": {"root": str(tmp_path / "data")}}}))
    result = CliRunner().invoke(main, ["validate", str(config)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and name in lines[0] and DAMAGE[how] in lines[0], result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("how", ["truncated plain file", "label out of range"])
def test_damage_only_the_data_shows_is_one_error_naming_the_file_when_read(tmp_path, how):
    from pat_ray.plugins.builtin.idx_format import DataFileError

    write_idx(tmp_path, per_class=12, test_per_class=3, gz=False)
    if how == "truncated plain file":
        path = tmp_path / "t10k-images-idx3-ubyte"
        path.write_bytes(path.read_bytes()[:-100])
        expected = "holds 23436 bytes; its header promises 23536"
    else:
        path = tmp_path / "train-labels-idx1-ubyte"
        blob = bytearray(path.read_bytes())
        blob[10] = 42
        path.write_bytes(bytes(blob))
        expected = "holds label 42; expected 0..9"
    with pytest.raises(DataFileError, match=expected) as caught:
        mnist(root=str(tmp_path))
    assert caught.value.path == path
