"""The verified download cache, against a fake cloud-images mirror on 127.0.0.1.

Real HTTP (requests against http.server), real gpg/gpgv with throwaway keys, real
files in a temp cache; nothing is mocked except where a test says it spies.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.config.tree import Config, resolve
from imagebuilder.errors import (
    ChecksumError,
    DownloadError,
    OfflineError,
    SignatureError,
    SourceError,
)
from imagebuilder.progress import Event, Progress
from imagebuilder.sources import cache, download, images
from imagebuilder.sources.cache_list import list_cache
from imagebuilder.sources.cache_prune import prune_cache
from imagebuilder.sources.images import fetch_base_image
from tests.fakes.cloudimages import MTIME, CloudImages, GpgKeys, image_bytes


def warnings(events: list[Event]) -> list[str]:
    return [e.name for e in events if e.kind == "warning"]


def make_cfg(srv: CloudImages, tmp: Path, keyring: Path | None, **values: Any) -> Config:
    base: dict[str, Any] = {"series": "jammy", "mirror": srv.url, "cache_dir": str(tmp / "c")}
    if keyring is not None:
        base["keyring"] = str(keyring)
    return resolve({**base, **values}, environ={})


@pytest.fixture
def cfg(server: CloudImages, keys: GpgKeys, tmp_path: Path) -> Config:
    return make_cfg(server, tmp_path, keys.keyring)


def cache_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("armored", [False, True], ids=["binary-keyring", "armored-keyring"])
def test_good_download_is_verified_and_cached(
    server: CloudImages,
    keys: GpgKeys,
    tmp_path: Path,
    progress: Progress,
    events: list[Event],
    armored: bool,
) -> None:
    img = server.ubuntu("jammy")
    keyring = keys.armored_keyring if armored else keys.keyring
    cfg = make_cfg(server, tmp_path, keyring)
    disk = fetch_base_image(cfg, progress)
    root = cfg.source.cache_dir
    assert disk.path == root / "blobs" / "sha256" / img.sha256
    assert disk.path.read_bytes() == img.data
    assert (disk.sha256, disk.format, disk.kind, disk.origin) == (
        img.sha256,
        "qcow2",
        "cloud",
        img.url,
    )
    assert disk.date == MTIME  # the image's Last-Modified
    assert not disk.path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert [h.path.rsplit("/", 1)[1] for h in server.hits] == [
        "SHA256SUMS",
        "SHA256SUMS.gpg",
        "jammy-server-cloudimg-amd64.img",
    ]
    assert all(h.agent.startswith("imagebuilder/") for h in server.hits)
    assert warnings(events) == []
    counters = [e.data for e in events if e.kind == "counter"]
    assert counters[-1] == {"done": len(img.data), "total": len(img.data), "unit": "B"}
    assert not list((root / "partial").glob("*.partial"))
    [entry] = list_cache(root)
    assert (entry.kind, entry.name, entry.digest, entry.url, entry.date) == (
        "cloud",
        "jammy-server-cloudimg-amd64.img",
        img.sha256,
        img.url,
        MTIME,
    )


def test_second_fetch_makes_no_request(
    server: CloudImages, cfg: Config, progress: Progress
) -> None:
    server.ubuntu("jammy")
    first = fetch_base_image(cfg, progress)
    before = server.count()
    second = fetch_base_image(cfg, progress)
    assert server.count() == before == 3
    assert second == first


def test_cut_download_resumes_with_range(
    server: CloudImages, cfg: Config, progress: Progress, events: list[Event]
) -> None:
    img = server.ubuntu("jammy")
    half = len(img.data) // 2
    server.cut(img.path, after=half)
    disk = fetch_base_image(cfg, progress)
    assert disk.path.read_bytes() == img.data
    first, second = server.requests_for(img.path)
    assert (first.range, first.status, first.sent) == (None, 200, half)
    assert (second.range, second.status) == (f"bytes={half}-", 206)
    assert second.sent == len(img.data) - half  # only the rest crossed the wire
    assert any("resuming" in e.name for e in events if e.kind == "info")


def test_download_broken_every_time_resumes_on_the_next_run(
    server: CloudImages, cfg: Config, progress: Progress
) -> None:
    img = server.ubuntu("jammy")
    step = 100_000
    server.cut(img.path, after=step, times=download.MAX_ATTEMPTS)
    with pytest.raises(DownloadError, match="kept breaking off") as err:
        fetch_base_image(cfg, progress)
    assert "again to resume" in (err.value.hint or "")
    kept = download.MAX_ATTEMPTS * step
    [partial] = (cfg.source.cache_dir / "partial").glob("*.partial")
    assert partial.stat().st_size == kept
    assert list_cache(cfg.source.cache_dir)[0].kind == "partial"
    server.hits.clear()
    disk = fetch_base_image(cfg, progress)
    assert disk.sha256 == img.sha256
    [resumed] = server.requests_for(img.path)
    assert (resumed.range, resumed.status, resumed.sent) == (
        f"bytes={kept}-",
        206,
        len(img.data) - kept,
    )


def test_partial_of_an_older_build_is_not_mixed_in(
    server: CloudImages, cfg: Config, progress: Progress
) -> None:
    old = server.ubuntu("jammy", seed=1)
    server.cut(old.path, after=500_000, times=download.MAX_ATTEMPTS)
    with pytest.raises(DownloadError):
        fetch_base_image(cfg, progress)
    new = server.ubuntu("jammy", seed=2, mtime=MTIME + 86400)  # a new daily build
    disk = fetch_base_image(cfg, progress)
    assert disk.path.read_bytes() == new.data
    last = server.requests_for(new.path)[-1]
    assert last.range is not None and last.status == 200  # If-Range saw the change
    assert last.sent == len(new.data)


def test_corrupt_download_is_rejected_and_not_cached(
    server: CloudImages, cfg: Config, progress: Progress
) -> None:
    img = server.ubuntu("jammy")
    server.corrupt(img)
    with pytest.raises(ChecksumError, match=f"sha256 is .* says {img.sha256}"):
        fetch_base_image(cfg, progress)
    root = cfg.source.cache_dir
    assert list_cache(root) == []
    leftovers = [f for f in cache_files(root) if not f.endswith(".lock")]
    assert leftovers == []
    assert server.count(img.path) == 1


def test_tampered_checksum_file_fails_signature_before_download(
    server: CloudImages, cfg: Config, progress: Progress
) -> None:
    img = server.ubuntu("jammy")
    sums = server.files[f"{img.folder}/SHA256SUMS"]
    sums.data = sums.data.replace(img.sha256.encode(), b"0" * 64)
    with pytest.raises(SignatureError, match=r"bad signature .* does not match"):
        fetch_base_image(cfg, progress)
    assert server.count(img.path) == 0
    assert list_cache(cfg.source.cache_dir) == []


def test_signature_by_an_unknown_key_fails(
    server: CloudImages, cfg: Config, progress: Progress
) -> None:
    img = server.ubuntu("jammy", stranger=True)
    with pytest.raises(SignatureError, match=r"not in .*trusted\.gpg"):
        fetch_base_image(cfg, progress)
    assert server.count(img.path) == 0


def test_no_keyring_warns_loudly_but_downloads(
    server: CloudImages,
    tmp_path: Path,
    progress: Progress,
    events: list[Event],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(images, "default_keyring", lambda release: None)  # host-independent
    img = server.ubuntu("jammy")
    disk = fetch_base_image(make_cfg(server, tmp_path, None), progress)
    assert disk.sha256 == img.sha256
    [warning] = warnings(events)
    assert "UNVERIFIED" in warning and "--keyring" in warning
    assert server.count(f"{img.folder}/SHA256SUMS.gpg") == 0


def test_no_keyring_with_require_signature_fails(
    server: CloudImages, tmp_path: Path, progress: Progress, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(images, "default_keyring", lambda release: None)
    img = server.ubuntu("jammy")
    cfg = make_cfg(server, tmp_path, None, require_signature=True)
    with pytest.raises(SignatureError, match=r"no keyring .* --require-signature") as err:
        fetch_base_image(cfg, progress)
    assert "--keyring" in (err.value.hint or "")
    assert server.count(img.path) == 0


def test_require_signature_rechecks_an_unsigned_cache_entry(
    server: CloudImages,
    keys: GpgKeys,
    tmp_path: Path,
    progress: Progress,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(images, "default_keyring", lambda release: None)
    img = server.ubuntu("jammy")
    fetch_base_image(make_cfg(server, tmp_path, None), progress)  # unsigned, with a warning
    strict = make_cfg(server, tmp_path, None, require_signature=True, offline=True)
    with pytest.raises(SignatureError, match="not signature-checked"):
        fetch_base_image(strict, progress)
    signed = make_cfg(server, tmp_path, keys.keyring, require_signature=True)
    assert fetch_base_image(signed, progress).sha256 == img.sha256
    assert server.count(img.path) == 1  # checked the signature, reused the bytes
    assert server.count(f"{img.folder}/SHA256SUMS.gpg") == 1
    strict_signed = make_cfg(server, tmp_path, keys.keyring, require_signature=True, offline=True)
    assert fetch_base_image(strict_signed, progress).sha256 == img.sha256


def test_missing_signature_with_explicit_keyring_fails(
    server: CloudImages, cfg: Config, progress: Progress
) -> None:
    img = server.ubuntu("jammy", signed=False)
    with pytest.raises(SignatureError, match=r"SHA256SUMS.gpg is missing"):
        fetch_base_image(cfg, progress)
    assert server.count(img.path) == 0


def test_offline_with_empty_cache_names_what_is_missing(
    server: CloudImages, keys: GpgKeys, tmp_path: Path, progress: Progress
) -> None:
    img = server.ubuntu("jammy")
    cfg = make_cfg(server, tmp_path, keys.keyring, offline=True, serial="20240507")
    with pytest.raises(OfflineError) as err:
        fetch_base_image(cfg, progress)
    msg, hint = err.value.message, err.value.hint or ""
    assert "jammy-server-cloudimg-amd64.img is not in the cache" in msg
    assert f"{server.url}/jammy/20240507/jammy-server-cloudimg-amd64.img" in msg
    assert str(cfg.source.cache_dir) in msg
    assert f"imagebuilder fetch jammy --serial 20240507 --mirror {server.url}" in hint
    assert "--base-image PATH" in hint
    assert server.count() == 0
    del img


def test_offline_uses_a_filled_cache(server: CloudImages, cfg: Config, progress: Progress) -> None:
    img = server.ubuntu("jammy")
    fetch_base_image(cfg, progress)
    before = server.count()
    offline = dataclasses.replace(cfg, source=dataclasses.replace(cfg.source, offline=True))
    assert fetch_base_image(offline, progress).sha256 == img.sha256
    assert server.count() == before


class HashSpy:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[Path] = []
        real = cache.hash_file

        def spy(path: Path, algos: Any = ("sha256",)) -> dict[str, str]:
            self.calls.append(path)
            return real(path, algos)

        monkeypatch.setattr(cache, "hash_file", spy)


def test_cached_file_is_reverified_from_its_stored_digest(
    server: CloudImages, cfg: Config, progress: Progress, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.ubuntu("jammy")
    spy = HashSpy(monkeypatch)
    disk = fetch_base_image(cfg, progress)
    assert spy.calls == []  # hashed while streaming, never re-read
    fetch_base_image(cfg, progress)
    assert spy.calls == []  # size, mtime and inode unchanged: the memo answers
    st = disk.path.stat()
    os.utime(disk.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    fetch_base_image(cfg, progress)
    assert spy.calls == [disk.path]  # touched: hashed once, then remembered
    fetch_base_image(cfg, progress)
    assert spy.calls == [disk.path]


def test_corrupted_cache_entry_is_dropped_and_fetched_again(
    server: CloudImages, cfg: Config, progress: Progress, events: list[Event]
) -> None:
    img = server.ubuntu("jammy")
    disk = fetch_base_image(cfg, progress)
    os.chmod(disk.path, 0o644)
    with disk.path.open("r+b") as f:
        f.seek(1000)
        f.write(b"rot")
    again = fetch_base_image(cfg, progress)
    assert again.path.read_bytes() == img.data
    assert server.count(img.path) == 2
    assert any("corrupt" in w for w in warnings(events))


def test_same_content_under_another_url_is_not_downloaded_again(
    server: CloudImages, keys: GpgKeys, tmp_path: Path, progress: Progress
) -> None:
    current = server.ubuntu("jammy")
    pinned = server.ubuntu("jammy", folder="20240507")  # same build, serial directory
    fetch_base_image(make_cfg(server, tmp_path, keys.keyring), progress)
    disk = fetch_base_image(make_cfg(server, tmp_path, keys.keyring, serial="20240507"), progress)
    assert disk.sha256 == current.sha256 and disk.origin == pinned.url
    assert server.count(pinned.path) == 0
    assert server.count(f"{pinned.folder}/SHA256SUMS.gpg") == 1


def test_serial_sets_the_date(
    server: CloudImages, keys: GpgKeys, tmp_path: Path, progress: Progress
) -> None:
    server.ubuntu("noble", folder="20240507", mtime=MTIME + 999)
    cfg = make_cfg(server, tmp_path, keys.keyring, series="noble", serial="20240507")
    disk = fetch_base_image(cfg, progress)
    assert disk.date == int(dt.datetime(2024, 5, 7, tzinfo=dt.timezone.utc).timestamp())


def test_released_tree_layout(
    server: CloudImages, keys: GpgKeys, tmp_path: Path, progress: Progress
) -> None:
    img = server.publish("/releases/noble/release", "ubuntu-24.04-server-cloudimg-amd64.img",
                         image_bytes(1 << 20, 5))  # fmt: skip
    cfg = make_cfg(server, tmp_path, keys.keyring, series="noble", released=True)
    assert fetch_base_image(cfg, progress).origin == img.url


def test_debian_image_is_checked_with_sha512_and_warned_unsigned(
    server: CloudImages, tmp_path: Path, progress: Progress, events: list[Event]
) -> None:
    img = server.debian("bookworm", "12")
    cfg = make_cfg(server, tmp_path, None, series="bookworm")
    disk = fetch_base_image(cfg, progress)
    assert disk.sha256 == img.sha256 and disk.format == "qcow2"
    assert server.count("/bookworm/latest/SHA512SUMS") == 1
    assert any("publishes no signature" in w for w in warnings(events))
    server.corrupt(img)
    other = make_cfg(server, tmp_path / "2", None, series="bookworm")
    with pytest.raises(ChecksumError, match="sha512"):
        fetch_base_image(other, progress)


# ---- --base-image ----------------------------------------------------------------------


def test_local_base_image_is_used_in_place_after_a_sha256_check(
    server: CloudImages, keys: GpgKeys, tmp_path: Path, progress: Progress
) -> None:
    local = tmp_path / "my.img"
    local.write_bytes(b"\0" * 65536)  # raw
    good = cache.hash_file(local)["sha256"]
    cfg = make_cfg(server, tmp_path, None, base_image=str(local), base_sha256=good)
    disk = fetch_base_image(cfg, progress)
    assert (disk.path, disk.format, disk.sha256, disk.origin) == (local, "raw", good, str(local))
    assert server.count() == 0
    bad = make_cfg(server, tmp_path, None, base_image=str(local), base_sha256="ab" * 32)
    with pytest.raises(ChecksumError, match=f"sha256 is {good}, not {'ab' * 32}"):
        fetch_base_image(bad, progress)
    missing = make_cfg(server, tmp_path, None, base_image=str(tmp_path / "nope.img"))
    with pytest.raises(SourceError, match="no such file"):
        fetch_base_image(missing, progress)


def test_base_image_url_with_checksum_file_beside_it(
    server: CloudImages, keys: GpgKeys, tmp_path: Path, progress: Progress
) -> None:
    img = server.publish("/mirror/custom", "golden.img", image_bytes(1 << 20, 3))
    cfg = make_cfg(server, tmp_path, keys.keyring, base_image=img.url)
    disk = fetch_base_image(cfg, progress)
    assert disk.sha256 == img.sha256 and disk.origin == img.url
    assert server.count("/mirror/custom/SHA256SUMS.gpg") == 1


def test_base_image_url_pinned_by_sha256_or_refused(
    server: CloudImages, keys: GpgKeys, tmp_path: Path, progress: Progress
) -> None:
    data = image_bytes(1 << 20, 4)
    server.put("/plain/disk.img", data)
    img_url = f"{server.url}/plain/disk.img"
    with pytest.raises(ChecksumError, match="no SHA256SUMS beside") as err:
        fetch_base_image(make_cfg(server, tmp_path, None, base_image=img_url), progress)
    assert "--base-sha256" in (err.value.hint or "")
    digest = cache.hash_file(server_file(tmp_path, data))["sha256"]
    cfg = make_cfg(server, tmp_path, None, base_image=img_url, base_sha256=digest)
    disk = fetch_base_image(cfg, progress)
    assert disk.sha256 == digest
    wrong = make_cfg(server, tmp_path / "x", None, base_image=img_url, base_sha256="cd" * 32)
    with pytest.raises(ChecksumError):
        fetch_base_image(wrong, progress)


def server_file(tmp: Path, data: bytes) -> Path:
    p = tmp / "expected.bin"
    p.write_bytes(data)
    return p


# ---- network failures ----------------------------------------------------------------


def test_unreachable_mirror_is_a_download_error_with_a_hint(
    tmp_path: Path, progress: Progress, monkeypatch: pytest.MonkeyPatch
) -> None:
    naps: list[float] = []  # the retry backoff's waits, recorded instead of slept
    monkeypatch.setattr(download, "RETRY", dataclasses.replace(download.RETRY, sleep=naps.append))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    cfg = resolve(
        {"series": "jammy", "mirror": f"http://127.0.0.1:{port}", "cache_dir": str(tmp_path)},
        environ={},
    )
    with pytest.raises(DownloadError, match=f"cannot reach 127.0.0.1:{port}") as err:
        fetch_base_image(cfg, progress)
    assert "--mirror" in (err.value.hint or "") and "--offline" in (err.value.hint or "")
    assert naps == [0.25, 0.5, 1.0]  # asked four times before giving up


def test_missing_image_is_a_download_error(
    server: CloudImages, cfg: Config, progress: Progress
) -> None:
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        fetch_base_image(cfg, progress)
    assert "--serial" in (err.value.hint or "")


# ---- cache list / prune ----------------------------------------------------------------


def test_list_and_prune(
    server: CloudImages, keys: GpgKeys, tmp_path: Path, progress: Progress
) -> None:
    old = server.ubuntu("jammy", folder="20240101", seed=1, size=1 << 20)
    new = server.ubuntu("jammy", folder="20240201", seed=2, size=1 << 20)
    for serial in ("20240101", "20240201"):
        fetch_base_image(make_cfg(server, tmp_path, keys.keyring, serial=serial), progress)
    root = tmp_path / "c"
    partial = cache.partial_path(root, "http://x/y.img", "y.img")
    partial.write_bytes(b"p" * 1000)
    orphan = cache.blob_path(root, "f" * 64)
    orphan.write_bytes(b"o" * 2000)
    boot = root / "bootstrap" / "k1"
    boot.mkdir(parents=True)
    (boot / "disk.qcow2").write_bytes(b"QFI\xfb" + b"\0" * 4092)
    (boot / "meta.json").write_text('{"suite": "bookworm", "arch": "amd64", "date": 1700000000}')
    building = root / "bootstrap" / ".tmp-k2-abc"  # a build in progress: never listed or pruned
    building.mkdir()

    kinds = [(e.kind, e.name, e.date) for e in list_cache(root)]
    assert kinds == [
        ("cloud", "jammy-server-cloudimg-amd64.img", 1704067200),
        ("cloud", "jammy-server-cloudimg-amd64.img", 1706745600),
        ("bootstrap", "bookworm amd64", 1700000000),
        ("partial", "y.img", None),
    ]
    freed = prune_cache(root)
    assert freed >= len(old.data) + 1000 + 2000
    assert [(e.kind, e.digest) for e in list_cache(root)] == [
        ("cloud", new.sha256),
        ("bootstrap", "k1"),
    ]
    assert prune_cache(root) < 1000  # nothing big left to free
    assert prune_cache(root, keep_latest=False) >= len(new.data) + 4096
    assert list_cache(root) == []
    assert building.is_dir()
    assert prune_cache(tmp_path / "never-made") == 0
