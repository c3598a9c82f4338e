"""Reading outputs for ``diff``: decompression by magic bytes, full reads, the
:class:`Difference` record and the errors a truncated file raises.

Shared by ``diff`` (tarballs) and ``diskdiff`` (raw disks), which both sit above it.
It only opens and reads files; it compares nothing and never prints.
"""

from __future__ import annotations

import bz2
import contextlib
import lzma
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import zstandard

from ..errors import ConfigError

CHUNK = 1 << 20
PAGE = 4096
SECTOR = 512
MAX_RANGES_SHOWN = 8

_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"BZh", "bzip2"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


@dataclass(frozen=True)
class Difference:
    """One way the outputs differ. ``kind`` is content, mode, owner, mtime, xattrs, link,
    type, device, header, only-in, order, bytes, partition or size."""

    kind: str
    path: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind:<9}{self.path}" + (f"  ({self.detail})" if self.detail else "")


# ---- opening outputs ----------------------------------------------------------------


def compression_of(path: Path) -> str:
    """gzip, xz, bzip2, zstd or none, from the file's magic bytes."""
    with path.open("rb") as f:
        head = f.read(8)
    return next((name for magic, name in _MAGIC if head.startswith(magic)), "none")


def _open_gzip(path: Path) -> IO[bytes]:
    try:
        from isal import igzip_threaded
    except ImportError:  # pragma: no cover - isal is a dependency
        import gzip

        return cast(IO[bytes], gzip.GzipFile(path, "rb"))
    return cast(IO[bytes], cast(Any, igzip_threaded).open(path, "rb", threads=1))


def _open_zstd(path: Path) -> IO[bytes]:
    raw = path.open("rb")
    return cast(IO[bytes], zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))


_OPENERS: dict[str, Callable[[Path], IO[bytes]]] = {
    "gzip": _open_gzip,
    "xz": lambda p: cast(IO[bytes], lzma.LZMAFile(p, "rb")),  # noqa: SIM115 (closed by caller)
    "bzip2": lambda p: cast(IO[bytes], bz2.BZ2File(p, "rb")),
    "zstd": _open_zstd,
    "none": lambda p: p.open("rb"),
}


@contextlib.contextmanager
def open_decompressed(path: Path) -> Iterator[IO[bytes]]:
    """The uncompressed bytes of ``path`` as a stream (gzip through isal when present)."""
    stream = _OPENERS[compression_of(path)](path)
    try:
        yield stream
    finally:
        stream.close()


def read_full(stream: IO[bytes], n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        block = stream.read(n - got)
        if not block:
            break
        parts.append(block)
        got += len(block)
    return b"".join(parts)


#: What a truncated or corrupt compressed file raises while it is read.
READ_ERRORS = (EOFError, OSError, lzma.LZMAError, zstandard.ZstdError, tarfile.TarError)


def unreadable(path: Path, exc: BaseException) -> ConfigError:
    return ConfigError(
        f"diff: cannot read {path}: {exc}", hint="is the file complete? compare finished outputs"
    )
