"""Freeing space in the cache (``imagebuilder cache prune``).

:func:`prune_cache` deletes what no build can use (partial downloads nobody is
writing, killed bundle imports, records without a blob, blobs without a record,
digest memos of vanished files) and, unless told to keep the latest, everything
else; it keeps the newest download of each file name and whatever an imported
bundle's lock pins.

The only module that deletes from the cache. It finds what is there with
``cache_list`` and never writes anything new; no network I/O, never prints.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .cache import UrlRecord, blob_path, locked, read_json, record_files
from .cache_list import bootstrap_dirs, bundle_dirs, bundle_lock, stale_imports, tree_size


def _bundle_pins(root: Path) -> set[str]:
    """sha256 of every download an imported bundle's lock pins (a prune keeps them)."""
    pins = set()
    for d in bundle_dirs(root):
        cloud = bundle_lock(d).get("cloud")
        if isinstance(cloud, dict) and isinstance(cloud.get("sha256"), str):
            pins.add(cloud["sha256"])
    return pins


def _remove(path: Path) -> int:
    """Delete a file or tree; return the bytes it held (0 if already gone)."""
    try:
        size = tree_size(path)
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
    for d in stale_imports(root, time.time()):
        freed += _remove(d)
    for p in sorted((root / "partial").glob("*.partial")):
        with locked(p, wait=False) as mine:
            if mine:
                freed += _remove(p) + _remove(p.with_name(p.name + ".json"))
    # Lock files stay: deleting one another process may be waiting on would break locking.

    newest: dict[str, UrlRecord] = {}
    records = record_files(root)
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
        for d in bootstrap_dirs(root):
            with locked(d, wait=False) as mine:  # skip one being (re)built right now
                if mine:
                    freed += _remove(d)
        for d in bundle_dirs(root):
            freed += _remove(d)
    return freed
