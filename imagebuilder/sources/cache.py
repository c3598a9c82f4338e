"""The on-disk cache: content-addressed blobs, URL records, a digest memo, partial downloads.

Layout under the cache root (``--cache-dir``)::

    blobs/sha256/<hex>             verified files, read-only, named by their sha256
    urls/<key>.json                URL -> digest, size, date, format (a cache hit needs no HTTP)
    partial/<key>-<name>.partial   downloads in progress (+ .json validators, .lock)
    digests/<key>.json             (path, size, mtime_ns, inode) -> sha256 memo for any file
    bootstrap/<key>/               base disks made by ``bootstrap`` (disk.qcow2 + meta.json)
    bundles/<lock digest>/         what ``bundle import`` keeps: the lock, keyrings, inputs
    .import-*/                     a ``bundle import`` in progress (or killed)

This module owns the layout and storing into it, nothing else: it does no network
I/O, knows no release, never prints, and deletes only the record it is asked to
forget. ``sources`` downloads into it; ``bootstrap`` and ``unbundle`` own their
subtrees; ``cache_list`` says what is there and ``cache_prune`` frees space (a full
prune deletes those subtrees too; a prune keeps the downloads an imported bundle's
lock pins).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CHUNK = 1 << 20
QCOW2_MAGIC = b"QFI\xfb"


def key_of(text: str) -> str:
    """A short stable file-name key for a URL or path."""
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def blob_path(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest


def detect_format(path: Path) -> str:
    """qemu format name from the file's magic: qcow2, else raw."""
    with path.open("rb") as f:
        return "qcow2" if f.read(4) == QCOW2_MAGIC else "raw"


def hash_file(path: Path, algos: Iterable[str] = ("sha256",)) -> dict[str, str]:
    """Hex digests of ``path`` for each algorithm, in one read."""
    hashers = {a: hashlib.new(a) for a in algos}
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            for h in hashers.values():
                h.update(block)
    return {a: h.hexdigest() for a, h in hashers.items()}


# ---- small JSON files, written atomically ---------------------------------------


def read_json(path: Path) -> dict[str, Any] | None:
    """The object in ``path``, or None when missing or unreadable (a cache miss)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---- digest memo: re-verification without rehashing ------------------------------


def _memo_path(root: Path, path: Path) -> Path:
    return root / "digests" / f"{key_of(str(path))}.json"


def _stat_key(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def remember_digest(root: Path, path: Path, digest: str) -> None:
    path = path.resolve()
    st = path.stat()
    write_json(_memo_path(root, path), {"path": str(path), "sha256": digest, **_stat_key(st)})


def file_sha256(root: Path, path: Path) -> str:
    """sha256 of ``path``; instant when its size, mtime and inode match the stored memo."""
    path = path.resolve()
    st = path.stat()
    memo = read_json(_memo_path(root, path))
    fresh = memo is not None and memo.get("path") == str(path)
    if fresh and memo and all(memo.get(k) == v for k, v in _stat_key(st).items()):
        return str(memo["sha256"])
    digest = hash_file(path)["sha256"]
    with contextlib.suppress(OSError):  # a read-only cache still verifies, just not instantly
        remember_digest(root, path, digest)
    return digest


# ---- blobs and URL records ---------------------------------------------------------


def store_blob(root: Path, src: Path, digest: str) -> Path:
    """Move a verified file into place under its digest (atomic rename), read-only."""
    dest = blob_path(root, digest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(src, 0o444)
    os.replace(src, dest)
    remember_digest(root, dest, digest)
    return dest


@dataclass(frozen=True)
class UrlRecord:
    """What the cache knows about one downloaded URL."""

    url: str
    name: str  # file name as published
    sha256: str
    size: int
    date: int  # serial / Last-Modified as epoch seconds
    format: str
    verified: str  # "gpg <keyring>", "unsigned SHA256SUMS", "pinned sha256 ..."
    sums: str = ""  # the published digest it matched, "<algo>:<hex>"
    fetched: int = field(default_factory=lambda: int(time.time()))
    kind: str = "cloud"


def _record_path(root: Path, url: str) -> Path:
    return root / "urls" / f"{key_of(url)}.json"


def load_record(root: Path, url: str) -> UrlRecord | None:
    data = read_json(_record_path(root, url))
    if data is None or data.get("url") != url:
        return None
    try:
        return UrlRecord(**data)
    except TypeError:
        return None


def save_record(root: Path, rec: UrlRecord) -> None:
    write_json(_record_path(root, rec.url), asdict(rec))


def forget_record(root: Path, url: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _record_path(root, url).unlink()


def find_record(root: Path, *, sha256: str) -> UrlRecord | None:
    """Any record of a file with this content whose blob is present."""
    for _, rec in record_files(root):
        if rec.sha256 == sha256 and blob_path(root, sha256).is_file():
            return rec
    return None


def all_records(root: Path) -> list[UrlRecord]:
    """Every URL record in the cache (blob present or not)."""
    return [rec for _, rec in record_files(root)]


def record_files(root: Path) -> list[tuple[Path, UrlRecord]]:
    """Every readable URL record with the file that holds it."""
    out = []
    for p in sorted((root / "urls").glob("*.json")):
        data = read_json(p)
        with contextlib.suppress(TypeError):
            if data is not None:
                out.append((p, UrlRecord(**data)))
    return out


# ---- partial downloads -------------------------------------------------------------


def partial_path(root: Path, url: str, name: str) -> Path:
    return root / "partial" / f"{key_of(url)}-{name}.partial"


@contextlib.contextmanager
def locked(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on ``path``.lock (one download per file at a time).

    With ``wait=False`` yields False instead of waiting when someone else holds it.
    """
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
