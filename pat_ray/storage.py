"""Where results go: a local folder or a URI (``s3://``, ``gs://``, ``abfs://``, ``hdfs://``,
``file://``, or any protocol an installed fsspec implementation knows).

A :class:`Location` names a file or folder in either, so the run folder, the oracle's folder
and Ray's storage are written the same way wherever they live. Replacing a file is atomic
where the store allows it: locally a temp file renamed into place; on object stores (S3, GCS,
Azure) one object upload, which readers see whole or not at all. On other stores (HDFS and
fsspec filesystems) a temp object is moved into place, as atomic as that store's move.

Nothing here connects to a store until a file is read or written: a URI is checked for a
known scheme only, so ``validate`` works offline.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import unquote, urlsplit, urlunsplit

if TYPE_CHECKING:
    import pyarrow.fs

ARROW_SCHEMES = frozenset({"file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"})
OBJECT_STORES = frozenset({"s3", "gs", "gcs", "abfs", "abfss"})  # one upload replaces an object whole


def has_scheme(value: str | os.PathLike) -> bool:
    """``s3://bucket/x`` has one; ``runs``, ``/data/runs`` and ``C:\\runs`` do not."""
    text = str(value)
    scheme = urlsplit(text).scheme
    return "://" in text and len(scheme) > 1


def check_scheme(value: str) -> None:
    """Raise ValueError naming the scheme when neither pyarrow nor fsspec knows it."""
    scheme = urlsplit(value).scheme.lower()
    if scheme in ARROW_SCHEMES:
        return
    try:
        import fsspec

        known = set(fsspec.available_protocols())
    except ImportError:
        known = set()
    if scheme not in known:
        raise ValueError(
            f"unknown storage scheme {scheme + '://'!r} in {value!r}: use a local folder, file://, s3://, gs://, "
            "abfs://, hdfs:// or a protocol of an installed fsspec implementation"
        )


@dataclass(frozen=True)
class Location:
    """A file or folder: an absolute local path, or a URI (query string kept, e.g. an S3
    ``?endpoint_override=...``)."""

    uri: str

    @classmethod
    def of(cls, value: str | os.PathLike | Location) -> Location:
        """The location ``value`` names; a relative local path is made absolute here, once."""
        if isinstance(value, Location):
            return value
        text = str(value)
        if has_scheme(text):
            check_scheme(text)
            parts = urlsplit(text)
            return cls(urlunsplit(parts._replace(path=parts.path.rstrip("/") or "/")))
        return cls(str(Path(text).expanduser().absolute()))

    @classmethod
    def given(cls, value: str | os.PathLike | Location) -> Location:
        """What a user names as an existing run, sweep or checkpoint: a path or any URI, a
        ``file://`` URI read as the local path it is (links such as ``latest`` included)."""
        text = str(value)
        if isinstance(value, str) and text.lower().startswith("file://"):
            return cls.of(Path(unquote(urlsplit(text).path)))
        return cls.of(value)

    @property
    def is_local(self) -> bool:
        return not has_scheme(self.uri)

    @property
    def local_path(self) -> Path:
        """The local path (``ValueError`` for a URI: callers that need a file copy it first)."""
        if not self.is_local:
            raise ValueError(f"{self.uri} is not a local path")
        return Path(self.uri)

    @property
    def name(self) -> str:
        return self.uri_path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def uri_path(self) -> str:
        return self.uri if self.is_local else urlsplit(self.uri).path

    @property
    def parent(self) -> Location:
        if self.is_local:
            return Location(str(Path(self.uri).parent))
        parts = urlsplit(self.uri)
        return Location(urlunsplit(parts._replace(path=parts.path.rstrip("/").rsplit("/", 1)[0] or "/")))

    def __truediv__(self, name: str) -> Location:
        if self.is_local:
            return Location(str(Path(self.uri) / name))
        parts = urlsplit(self.uri)
        return Location(urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + name)))

    def __str__(self) -> str:
        return self.uri

    # --- the store behind a URI -------------------------------------------------------------

    def filesystem(self) -> tuple[pyarrow.fs.FileSystem, str]:
        """pyarrow's filesystem and the path in it (what Ray Train's ``storage_filesystem`` takes)."""
        if self.is_local:
            import pyarrow.fs

            return pyarrow.fs.LocalFileSystem(), self.uri
        parts = urlsplit(self.uri)
        root = urlunsplit(parts._replace(path=""))
        return _filesystem(root), _store_path(parts)

    # --- reading ----------------------------------------------------------------------------

    def exists(self) -> bool:
        if self.is_local:
            return Path(self.uri).exists()
        import pyarrow.fs

        fs, path = self.filesystem()
        return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound

    def is_file(self) -> bool:
        if self.is_local:
            return Path(self.uri).is_file()
        import pyarrow.fs

        fs, path = self.filesystem()
        return fs.get_file_info(path).type == pyarrow.fs.FileType.File

    def children(self) -> list[str]:
        """The names of the files and folders directly in this folder (none when it is missing)."""
        if self.is_local:
            folder = Path(self.uri)
            return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        import pyarrow.fs

        fs, path = self.filesystem()
        found = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
        return sorted(info.base_name for info in found)

    def read_bytes(self) -> bytes:
        if self.is_local:
            return Path(self.uri).read_bytes()
        fs, path = self.filesystem()
        try:
            with fs.open_input_stream(path) as stream:
                return stream.read()
        except FileNotFoundError:
            raise FileNotFoundError(2, "No such file", self.uri) from None

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def download(self, local: Path) -> Path:
        """This file as a local file (itself when it is one)."""
        if self.is_local:
            return self.local_path
        atomic_write(local, lambda handle: handle.write(self.read_bytes()))
        return local

    # --- writing ----------------------------------------------------------------------------

    def write_bytes(self, data: bytes, backup: Location | None = None) -> None:
        """Replace this file with ``data``; ``backup``: keep the file it replaces there."""
        self.write_with(lambda handle: handle.write(data), backup)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def write_with(self, write: Callable[[BinaryIO], object], backup: Location | None = None) -> None:
        """Replace this file with what ``write`` writes into a binary handle."""
        if self.is_local:
            atomic_write(self.uri, write, None if backup is None else backup.local_path)
            return
        fs, path = self.filesystem()
        if backup is not None and self.is_file():
            fs.copy_file(path, backup.filesystem()[1])  # the old file stays readable meanwhile
        object_store = urlsplit(self.uri).scheme.lower() in OBJECT_STORES
        target = path if object_store else _temp_name(path)
        if not object_store:  # folders are real on these stores
            fs.create_dir(path.rpartition("/")[0], recursive=True)
        try:
            with fs.open_output_stream(target) as stream:
                write(stream)
            if target != path:
                fs.move(target, path)
        except BaseException:
            if target != path:
                _delete_quietly(fs, target)
            raise

    def upload(self, local: Path, backup: Location | None = None) -> None:
        """Copy the local file ``local`` here."""
        if self.is_local and Path(self.uri) == local:
            return
        with open(local, "rb") as source:
            self.write_with(lambda handle: shutil.copyfileobj(source, handle, 1 << 20), backup)

    def copy_from(self, source: Location, backup: Location | None = None) -> None:
        """Copy the file ``source`` here: within one store without passing through this process."""
        if source.is_local:
            self.upload(source.local_path, backup)
            return
        if not self.is_local and _same_store(source, self) and urlsplit(self.uri).scheme.lower() in OBJECT_STORES:
            fs, path = self.filesystem()
            if backup is not None and self.is_file():
                fs.copy_file(path, backup.filesystem()[1])
            fs.copy_file(source.filesystem()[1], path)  # a server-side copy: one request
            return
        self.write_bytes(source.read_bytes(), backup)

    def makedirs(self) -> None:
        if self.is_local:
            Path(self.uri).mkdir(parents=True, exist_ok=True)
            return
        fs, path = self.filesystem()
        fs.create_dir(path, recursive=True)


def _same_store(a: Location, b: Location) -> bool:
    pa, pb = urlsplit(a.uri), urlsplit(b.uri)
    return (pa.scheme, pa.netloc, pa.query) == (pb.scheme, pb.netloc, pb.query)


def _store_path(parts) -> str:
    """pyarrow's path in the store: the bucket (netloc) first for object stores."""
    if parts.scheme.lower() in ARROW_SCHEMES - {"file"}:
        return (parts.netloc + parts.path).rstrip("/")
    return parts.path.rstrip("/") or "/"


@cache
def _filesystem(root: str) -> pyarrow.fs.FileSystem:
    """One filesystem object per store (bucket + options), made on first use."""
    import pyarrow.fs

    scheme = urlsplit(root).scheme.lower()
    if scheme == "file":
        return pyarrow.fs.LocalFileSystem()
    if scheme in ARROW_SCHEMES:
        return pyarrow.fs.FileSystem.from_uri(root)[0]
    import fsspec

    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fsspec.filesystem(scheme)))


def _temp_name(path: str) -> str:
    head, _, name = path.rpartition("/")
    return f"{head}/.{name}.{os.getpid()}.tmp"


def _delete_quietly(fs: pyarrow.fs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except OSError:
        pass


def atomic_write(
    path: str | os.PathLike, write: Callable[[BinaryIO], object], backup: str | os.PathLike | None = None
) -> None:
    """Call ``write`` on a temp file next to ``path``, then rename it into place.

    ``backup``: where the file being replaced goes, so that a new file that turns out to be
    damaged (a disk error, a kill during a later copy) never costs the one before it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the user's umask
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())  # a full disk or an I/O error shows here, not after the rename
        if backup is not None and path.exists():
            os.replace(path, backup)
        os.replace(tmp, path)
    except Exception as err:
        full = _disk_full(path.parent)  # measured before the temp file gives its space back
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(err, path, full) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _disk_full(folder: Path) -> bool:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 2**20


def _write_error(err: Exception, path: Path, full: bool) -> Exception:
    """The error a failed write becomes: an OSError naming the file and the cause, also when the
    writer (torch.save's zip writer, say) reported a full disk as something else."""
    if isinstance(err, OSError) and err.errno is not None:
        return OSError(err.errno, os.strerror(err.errno), str(path))
    if full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return err


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide, so never race other threads
