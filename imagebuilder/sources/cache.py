"""The on-disk cache: content-addressed blobs, URL records, a digest memo; list and prune.

Layout under the cache root (``--cache-dir``)::

    blobs/sha256/<hex>             verified files, read-only, named by their sha256
    urls/<key>.json                URL -> digest, size, date, format (a cache hit needs no HTTP)
    partial/<key>-<name>.partial   downloads in progress (+ .json validators, .lock)
    digests/<key>.json             (path, size, mtime_ns, inode) -> sha256 memo for any file
    bootstrap/<key>/               base disks made by ``bootstrap`` (disk.qcow2 + meta.json)
    bundles/<lock digest>/         what ``bundle import`` keeps: the lock, keyrings, inputs
    .import-*/                     a ``bundle import`` in progress (or killed)

This module owns the layout and nothing else: it does no network I/O, knows no
release, never prints. ``sources`` downloads into it; ``bootstrap`` and ``unbundle``
own their subtrees (listed here, deleted only by a full prune; a prune keeps the
downloads an imported bundle's lock pins).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CHUNK = 1 << 20
QCOW2_MAGIC = b"QFI\xfb"
BUNDLE_LOCK = "imagebuilder.lock"  # bundle.LOCK_NAME (bundle imports this module)
#: A ``.import-*`` staging directory untouched this long belongs to a killed import.
STALE_IMPORT = 6 * 3600


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
    for _, rec in _all_records(root):
        if rec.sha256 == sha256 and blob_path(root, sha256).is_file():
            return rec
    return None


def all_records(root: Path) -> list[UrlRecord]:
    """Every URL record in the cache (blob present or not)."""
    return [rec for _, rec in _all_records(root)]


def _all_records(root: Path) -> list[tuple[Path, UrlRecord]]:
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


# ---- cache list / prune --------------------------------------------------------------


@dataclass(frozen=True)
class CacheEntry:
    name: str
    kind: str  # "cloud" | "bootstrap" | "bundle" | "partial"
    size: int
    date: int | None
    digest: str | None
    url: str | None
    path: Path


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _bootstrap_dirs(root: Path) -> list[Path]:
    """Finished bootstrap base disks (``.tmp-*`` work dirs of running builds are not)."""
    base = root / "bootstrap"
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def _bootstrap_entry(d: Path) -> CacheEntry:
    meta = read_json(d / "meta.json") or {}
    disk = d / "disk.qcow2"
    label = " ".join(str(meta[k]) for k in ("suite", "arch") if meta.get(k))
    date = meta.get("date")
    if not isinstance(date, int):
        date = int(disk.stat().st_mtime) if disk.exists() else None
    digest = meta.get("sha256") or meta.get("key") or d.name
    mirror = meta.get("mirror")
    return CacheEntry(
        name=str(meta.get("name") or label or d.name),
        kind="bootstrap",
        size=_tree_size(d),
        date=date,
        digest=str(digest),
        url=str(mirror) if mirror else None,
        path=d,
    )


def _bundle_dirs(root: Path) -> list[Path]:
    """Imported bundles (the ``.tmp-*`` of an import being installed are not)."""
    base = root / "bundles"
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def _bundle_lock(d: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = tomllib.loads((d / BUNDLE_LOCK).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
    return data


def _bundle_entry(d: Path) -> CacheEntry:
    lock = _bundle_lock(d)
    label = " ".join(str(lock[k]) for k in ("series", "arch", "base") if lock.get(k))
    try:
        date: int | None = int((d / BUNDLE_LOCK).stat().st_mtime)
    except OSError:
        date = None
    return CacheEntry(
        name=f"{label} bundle" if label else d.name,
        kind="bundle",
        size=_tree_size(d),
        date=date,
        digest=d.name,
        url=None,
        path=d,
    )


def _bundle_pins(root: Path) -> set[str]:
    """sha256 of every download an imported bundle's lock pins (a prune keeps them)."""
    pins = set()
    for d in _bundle_dirs(root):
        cloud = _bundle_lock(d).get("cloud")
        if isinstance(cloud, dict) and isinstance(cloud.get("sha256"), str):
            pins.add(cloud["sha256"])
    return pins


def _stale_imports(root: Path, now: float) -> list[Path]:
    """Staging directories of ``bundle import`` runs that were killed."""
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.glob(".import-*") if p.is_dir() and now - p.stat().st_mtime > STALE_IMPORT
    )


def list_cache(root: Path) -> list[CacheEntry]:
    """Everything in the cache: downloads, bootstrap base disks, imported bundles, partial
    downloads and killed imports."""
    entries: list[CacheEntry] = []
    for _, rec in _all_records(root):
        blob = blob_path(root, rec.sha256)
        if blob.exists():
            entries.append(
                CacheEntry(
                    rec.name, rec.kind, blob.stat().st_size, rec.date, rec.sha256, rec.url, blob
                )
            )
    entries.extend(_bootstrap_entry(d) for d in _bootstrap_dirs(root))
    entries.extend(_bundle_entry(d) for d in _bundle_dirs(root))
    for p in sorted((root / "partial").glob("*.partial")):
        meta = read_json(p.with_name(p.name + ".json")) or {}
        name = p.name.removesuffix(".partial").split("-", 1)[-1]
        url = meta.get("url")
        entries.append(
            CacheEntry(name, "partial", p.stat().st_size, None, None, str(url) if url else None, p)
        )
    for d in _stale_imports(root, time.time()):
        entries.append(
            CacheEntry("interrupted bundle import", "partial", _tree_size(d), None, None, None, d)
        )
    order = {"cloud": 0, "bootstrap": 1, "bundle": 2, "partial": 3}
    entries.sort(key=lambda e: (order.get(e.kind, 9), e.name, e.date or 0))
    return entries


def _remove(path: Path) -> int:
    """Delete a file or tree; return the bytes it held (0 if already gone)."""
    try:
        size = _tree_size(path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return 0
    return size


def prune_cache(root: Path, *, keep_latest: bool = True) -> int:
    """Free space; return the bytes freed.

    Always: partial downloads nobody is writing, killed bundle imports, records whose
    blob is gone, blobs no record names, digest memos of vanished files. With
    ``keep_latest`` (the default) only the newest download of each file name is kept,
    plus any an imported bundle pins, and bootstrap base disks and bundles stay;
    without it, everything cached goes (downloads, bootstrap base disks, bundles).
    """
    if not root.is_dir():
        return 0
    freed = 0
    for d in _stale_imports(root, time.time()):
        freed += _remove(d)
    for p in sorted((root / "partial").glob("*.partial")):
        with locked(p, wait=False) as mine:
            if mine:
                freed += _remove(p) + _remove(p.with_name(p.name + ".json"))
    # Lock files stay: deleting one another process may be waiting on would break locking.

    newest: dict[str, UrlRecord] = {}
    records = _all_records(root)
    for _, rec in records:
        if blob_path(root, rec.sha256).exists():
            best = newest.get(rec.name)
            if best is None or (rec.date, rec.fetched) > (best.date, best.fetched):
                newest[rec.name] = rec
    kept: set[str] = set()
    pinned = _bundle_pins(root) if keep_latest else set()
    for path, rec in records:
        same = newest.get(rec.name)
        # Keep every URL whose content is the newest of its name (current/ and its serial)
        # or what a bundle's offline build needs.
        newest_of_name = same is not None and rec.sha256 == same.sha256
        if keep_latest and (newest_of_name or rec.sha256 in pinned):
            kept.add(rec.sha256)
        else:
            freed += _remove(path)
    for blob in sorted((root / "blobs" / "sha256").glob("*")):
        if blob.name not in kept and blob.name not in pinned:
            freed += _remove(blob)
    for memo in sorted((root / "digests").glob("*.json")):
        target = (read_json(memo) or {}).get("path")
        if not target or not Path(str(target)).exists():
            freed += _remove(memo)
    if not keep_latest:
        for d in _bootstrap_dirs(root):
            with locked(d, wait=False) as mine:  # skip one being (re)built right now
                if mine:
                    freed += _remove(d)
        for d in _bundle_dirs(root):
            freed += _remove(d)
    return freed
