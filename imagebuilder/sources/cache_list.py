"""What the cache holds, as rows for ``imagebuilder cache list``.

:func:`list_cache` names every download whose blob is present, the bootstrap base
disks, the imported bundles, the partial downloads and the staging directories of
killed bundle imports, with their sizes and dates. The directory walks it does
(:func:`bootstrap_dirs`, :func:`bundle_dirs`, :func:`stale_imports`,
:func:`tree_size`) are shared with ``cache_prune``.

This module only reads: it deletes nothing (``cache_prune`` does), does no network
I/O and never prints. The layout it reads is :mod:`imagebuilder.sources.cache`'s.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import blob_path, read_json, record_files

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUNDLE_LOCK = "imagebuilder.lock"  # bundle.LOCK_NAME (bundle imports this module)
#: A ``.import-*`` staging directory untouched this long belongs to a killed import.
STALE_IMPORT = 6 * 3600


@dataclass(frozen=True)
class CacheEntry:
    name: str
    kind: str  # "cloud" | "bootstrap" | "bundle" | "partial"
    size: int
    date: int | None
    digest: str | None
    url: str | None
    path: Path


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def bootstrap_dirs(root: Path) -> list[Path]:
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
        size=tree_size(d),
        date=date,
        digest=str(digest),
        url=str(mirror) if mirror else None,
        path=d,
    )


def bundle_dirs(root: Path) -> list[Path]:
    """Imported bundles (the ``.tmp-*`` of an import being installed are not)."""
    base = root / "bundles"
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def bundle_lock(d: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = tomllib.loads((d / BUNDLE_LOCK).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
    return data


def _bundle_entry(d: Path) -> CacheEntry:
    lock = bundle_lock(d)
    label = " ".join(str(lock[k]) for k in ("series", "arch", "base") if lock.get(k))
    try:
        date: int | None = int((d / BUNDLE_LOCK).stat().st_mtime)
    except OSError:
        date = None
    return CacheEntry(
        name=f"{label} bundle" if label else d.name,
        kind="bundle",
        size=tree_size(d),
        date=date,
        digest=d.name,
        url=None,
        path=d,
    )


def stale_imports(root: Path, now: float) -> list[Path]:
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
    for _, rec in record_files(root):
        blob = blob_path(root, rec.sha256)
        if blob.exists():
            entries.append(
                CacheEntry(
                    rec.name, rec.kind, blob.stat().st_size, rec.date, rec.sha256, rec.url, blob
                )
            )
    entries.extend(_bootstrap_entry(d) for d in bootstrap_dirs(root))
    entries.extend(_bundle_entry(d) for d in bundle_dirs(root))
    for p in sorted((root / "partial").glob("*.partial")):
        meta = read_json(p.with_name(p.name + ".json")) or {}
        name = p.name.removesuffix(".partial").split("-", 1)[-1]
        url = meta.get("url")
        entries.append(
            CacheEntry(name, "partial", p.stat().st_size, None, None, str(url) if url else None, p)
        )
    for d in stale_imports(root, time.time()):
        entries.append(
            CacheEntry("interrupted bundle import", "partial", tree_size(d), None, None, None, d)
        )
    order = {"cloud": 0, "bootstrap": 1, "bundle": 2, "partial": 3}
    entries.sort(key=lambda e: (order.get(e.kind, 9), e.name, e.date or 0))
    return entries
