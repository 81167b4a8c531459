"""The idx format of MNIST and Fashion-MNIST, read and checked rather than trusted.

An idx file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian 4-byte size per dimension, then the values. Every way a file can be wrong (not
gzip, truncated, a wrong magic number or type, wrong dimensions, extra bytes) is one
``DataFileError`` naming the file and the problem. ``check_header`` reads only the header and,
for a gzipped file, its size trailer, so ``validate`` catches most damage in milliseconds.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import BinaryIO

import torch

UBYTE = 0x08  # the only type the MNIST family uses


class DataFileError(ValueError):
    """A data file is damaged or not what its name says; the message names the file."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"data file {str(path)!r}: {problem}")

    def __reduce__(self):  # picklable, so Ray can carry it from a worker to the driver
        return (type(self), (self.path, self.problem))


@dataclass(frozen=True)
class IdxHeader:
    dims: tuple[int, ...]

    @property
    def data_bytes(self) -> int:
        return prod(self.dims)

    @property
    def total_bytes(self) -> int:
        return 4 + 4 * len(self.dims) + self.data_bytes


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")  # type: ignore[return-value]


@contextmanager
def _gzip_errors(path: Path) -> Iterator[None]:
    """gzip's errors as one DataFileError naming the file."""
    try:
        yield
    except gzip.BadGzipFile:
        raise DataFileError(path, "is not a gzip file, although its name ends in .gz") from None
    except (EOFError, zlib.error) as err:
        raise DataFileError(path, f"is a truncated or damaged gzip file ({err})") from None


def _parse_header(path: Path, handle: BinaryIO, ndim: int) -> IdxHeader:
    magic = handle.read(4)
    if len(magic) < 4:
        raise DataFileError(path, f"is empty or truncated ({len(magic)} bytes; an idx file starts with 4)")
    if magic[:2] != b"\0\0":
        raise DataFileError(path, f"is not an idx file (magic number {magic.hex()}, expected 0000{UBYTE:02x}0{ndim})")
    if magic[2] != UBYTE:
        raise DataFileError(path, f"holds idx type 0x{magic[2]:02x}; MNIST-style files hold unsigned bytes (0x08)")
    if magic[3] != ndim:
        raise DataFileError(path, f"has {magic[3]} dimensions; expected {ndim}")
    sizes = handle.read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise DataFileError(path, "is truncated inside its header")
    return IdxHeader(struct.unpack(f">{ndim}I", sizes))


def check_header(path: Path, ndim: int) -> IdxHeader:
    """The file's header, checked; a plain file's size and a gzipped one's size trailer too."""
    with _gzip_errors(path), _open(path) as handle:
        header = _parse_header(path, handle, ndim)
    if path.suffix == ".gz":
        with path.open("rb") as raw:  # gzip's last 4 bytes: the uncompressed size, mod 2**32
            raw.seek(-4, 2)
            stored = struct.unpack("<I", raw.read(4))[0]
        if stored != header.total_bytes % 2**32:
            raise DataFileError(path, f"is truncated or damaged (its header promises {header.total_bytes} bytes)")
    elif (size := path.stat().st_size) != header.total_bytes:
        raise DataFileError(path, f"holds {size} bytes; its header promises {header.total_bytes}")
    return header


def read_idx(path: Path, ndim: int) -> torch.Tensor:
    """The values of an idx file of ``ndim`` dimensions, as a uint8 tensor of that shape."""
    with _gzip_errors(path), _open(path) as handle:
        header = _parse_header(path, handle, ndim)
        data = handle.read(header.data_bytes)
        extra = len(handle.read(1))
    if len(data) < header.data_bytes:
        raise DataFileError(
            path, f"is truncated: {len(data)} of the {header.data_bytes} data bytes its header promises"
        )
    if extra:
        raise DataFileError(path, "holds more bytes than its header promises")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).reshape(header.dims)


def check_pair(images: Path, labels: Path, image_shape: tuple[int, int]) -> None:
    """Headers of an images file and its labels file agree: as many labels as images, images of
    ``image_shape``."""
    image_header, label_header = check_header(images, 3), check_header(labels, 1)
    if image_header.dims[1:] != image_shape:
        raise DataFileError(
            images,
            f"holds {image_header.dims[1]}x{image_header.dims[2]} images; expected {image_shape[0]}x{image_shape[1]}",
        )
    if image_header.dims[0] != label_header.dims[0]:
        raise DataFileError(
            labels, f"holds {label_header.dims[0]} labels for the {image_header.dims[0]} images of {images.name}"
        )


def check_labels(path: Path, labels: torch.Tensor, classes: int) -> None:
    if labels.numel() and int(labels.max()) >= classes:
        raise DataFileError(path, f"holds label {int(labels.max())}; expected 0..{classes - 1}")
