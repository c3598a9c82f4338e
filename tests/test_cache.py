"""cache list / prune over imported bundles and killed bundle imports (no network)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from imagebuilder.sources import cache, cache_list, cache_prune


def add_download(root: Path, name: str, url: str, data: bytes, date: int) -> str:
    digest = hashlib.sha256(data).hexdigest()
    src = root / f"{digest}.tmp"
    root.mkdir(parents=True, exist_ok=True)
    src.write_bytes(data)
    cache.store_blob(root, src, digest)
    rec = cache.UrlRecord(url, name, digest, len(data), date, "qcow2", verified="test")
    cache.save_record(root, rec)
    return digest


def add_bundle(root: Path, digest: str, series: str, cloud_sha256: str | None) -> Path:
    d = root / "bundles" / digest
    (d / "keyrings").mkdir(parents=True)
    (d / "keyrings" / "k.gpg").write_bytes(b"k" * 100)
    lock = f'lock_version = 1\nseries = "{series}"\narch = "amd64"\nbase = "cloud"\n'
    if cloud_sha256:
        lock += f'[cloud]\nname = "img"\nsha256 = "{cloud_sha256}"\n'
    (d / cache_list.BUNDLE_LOCK).write_text(lock)
    return d


def test_bundles_are_listed_and_kept_with_the_downloads_they_pin(tmp_path: Path) -> None:
    root = tmp_path / "c"
    img = "jammy-server-cloudimg-amd64.img"
    old = add_download(root, img, "http://x/20240101/img", b"o" * 5000, 1704067200)
    new = add_download(root, img, "http://x/20240201/img", b"n" * 5000, 1706745600)
    bundle = add_bundle(root, "0123456789abcdef", "jammy", old)
    (root / "bundles" / ".tmp-being-installed").mkdir()

    entries = cache_list.list_cache(root)
    assert [(e.kind, e.name) for e in entries] == [
        ("cloud", img),
        ("cloud", img),
        ("bundle", "jammy amd64 cloud bundle"),
    ]
    assert entries[-1].path == bundle and entries[-1].size >= 100
    assert entries[-1].digest == "0123456789abcdef"

    cache_prune.prune_cache(root)  # the older serial is not the newest, but the bundle pins it
    assert {e.digest for e in cache_list.list_cache(root) if e.kind == "cloud"} == {old, new}
    assert cache.blob_path(root, old).is_file()
    assert cache.load_record(root, "http://x/20240101/img") is not None

    bundle_lock = bundle / cache_list.BUNDLE_LOCK
    bundle_lock.write_text(bundle_lock.read_text().replace(old, "f" * 64))
    cache_prune.prune_cache(root)  # pinned no more: the older serial goes
    assert {e.digest for e in cache_list.list_cache(root) if e.kind == "cloud"} == {new}

    freed = cache_prune.prune_cache(root, keep_latest=False)
    assert freed >= 5000 + 100
    assert cache_list.list_cache(root) == [] and not bundle.exists()


def test_a_damaged_bundle_lock_is_listed_by_its_directory(tmp_path: Path) -> None:
    bundle = add_bundle(tmp_path, "fedcba9876543210", "bookworm", None)
    (bundle / cache_list.BUNDLE_LOCK).write_text("not = [toml")
    [entry] = cache_list.list_cache(tmp_path)
    assert (entry.kind, entry.name) == ("bundle", "fedcba9876543210")
    assert cache_prune.prune_cache(tmp_path) == 0 and bundle.is_dir()


def test_killed_imports_are_pruned_running_ones_are_not(tmp_path: Path) -> None:
    killed = tmp_path / ".import-killed"
    running = tmp_path / ".import-running"
    for d in (killed, running):
        d.mkdir()
        (d / "disk.qcow2").write_bytes(b"d" * 3000)
    gone = time.time() - cache_list.STALE_IMPORT - 60
    os.utime(killed, (gone, gone))
    assert [(e.kind, e.name, e.path) for e in cache_list.list_cache(tmp_path)] == [
        ("partial", "interrupted bundle import", killed)
    ]
    assert cache_prune.prune_cache(tmp_path) == 3000
    assert not killed.exists() and running.is_dir()
