"""Offline bundles: create from a filled cache, import into an empty one, build inputs offline.

The cloud case fills its cache from the fake cloud-images server (real HTTP, real
gpg); the bootstrap case uses a cached base laid out as bootstrap.py leaves one.
One test imports and looks the base up inside a network namespace with no route
(``unshare --net``) to prove nothing needs the network.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path
from typing import IO, Any, cast

import pytest
import zstandard

from imagebuilder.base import bootstrap
from imagebuilder.base import recipe as bootrecipe
from imagebuilder.config.tree import Config, resolve
from imagebuilder.errors import ChecksumError, ConfigError, OfflineError, SignatureError
from imagebuilder.progress import Event, Progress
from imagebuilder.repro import bundle_create as bundle
from imagebuilder.repro import bundle_import, lock, lock_check
from imagebuilder.repro.lock import Lock
from imagebuilder.run import run
from imagebuilder.sources import cache, images
from tests.fakes.cloudimages import CloudImages, FakeImage, GpgKeys

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Made:
    img: FakeImage
    cfg: Config
    lock: Lock
    bundle: bundle.BundleInfo
    script: Path


@pytest.fixture
def made(server: CloudImages, keys: GpgKeys, tmp_path: Path, progress: Progress) -> Made:
    """A connected host: cache filled from the server, lock written, bundle made."""
    img = server.ubuntu("jammy", size=5 << 20)
    script = tmp_path / "customize.sh"
    script.write_text("#!/bin/sh\necho hello > /etc/motd\n")
    script.chmod(0o755)
    values = {
        "series": "jammy",
        "mirror": server.url,
        "cache_dir": str(tmp_path / "online"),
        "keyring": str(keys.keyring),
        "customize": str(script),
    }
    cfg = resolve(values, environ={})
    lk = lock.resolve_lock(cfg, progress)
    info = bundle.create_bundle(cfg, lk, tmp_path / "out" / "jammy.tar.zst", progress=progress)
    return Made(img, cfg, lk, info, script)


def members(path: Path) -> list[tarfile.TarInfo]:
    with (
        path.open("rb") as raw,
        zstandard.ZstdDecompressor().stream_reader(raw) as zr,
        tarfile.open(fileobj=cast(IO[bytes], zr), mode="r|") as tar,
    ):
        return list(tar)


def offline_cfg(m: Made, cache_dir: Path, res: bundle_import.ImportResult) -> Config:
    return lock.config_from_lock(
        res.lock, {"cache_dir": str(cache_dir), "offline": True, "customize": str(res.customize)}
    )


def test_cloud_bundle_round_trip_into_a_fresh_cache(
    made: Made, tmp_path: Path, progress: Progress, events: list[Event]
) -> None:
    info = made.bundle
    assert info.path.is_file() and not list(info.path.parent.glob(".*partial"))
    names = [t.name for t in members(info.path)]
    assert names == [
        "bundle.json",
        "imagebuilder.lock",
        "cloud/jammy-server-cloudimg-amd64.img",
        "checksums/SHA256SUMS",
        "checksums/SHA256SUMS.gpg",
        "keyrings/trusted.gpg",
        "inputs/customize/customize.sh",
    ]
    assert info.size < len(made.img.data) + 64 * 1024  # random bytes: zstd stores them
    assert info.sha256 == cache.hash_file(info.path)["sha256"]

    fresh = tmp_path / "airgapped"
    res = bundle_import.import_bundle(
        info.path, fresh, progress=progress, keyring=made.cfg.source.keyring
    )
    assert res.lock == made.lock and res.lock_path.read_text() == lock.to_toml(made.lock)
    assert res.customize is not None and res.customize.read_bytes() == made.script.read_bytes()
    assert os.access(res.customize, os.X_OK)
    assert res.curtin_hooks is None and res.http_dir is None
    assert not [p for p in fresh.iterdir() if p.name.startswith(".import-")]

    cfg = offline_cfg(made, fresh, res)
    lock_check.check_locked(cfg, res.lock)
    base = images.fetch_base_image(cfg, progress)
    assert base.path == cache.blob_path(fresh, made.img.sha256)
    assert base.path.read_bytes() == made.img.data and base.date == made.lock.cloud.date  # type: ignore[union-attr]
    lock_check.check_base(base, res.lock)
    rec = cache.load_record(fresh, made.img.url)
    assert rec is not None and rec.verified.startswith("gpg ")
    assert f"imported from bundle (gpg {made.cfg.source.keyring})" in rec.verified
    assert [e for e in events if e.kind == "warning"] == []


def test_the_bundles_own_keyring_is_used_with_a_warning(
    made: Made, tmp_path: Path, progress: Progress, events: list[Event]
) -> None:
    res = bundle_import.import_bundle(made.bundle.path, tmp_path / "c2", progress=progress)
    assert "bundle's own keyring" in res.installed[0]
    assert any("proves the bundle is intact" in e.name for e in events if e.kind == "warning")


def test_a_stranger_keyring_rejects_the_bundled_signature(
    made: Made, keys: GpgKeys, tmp_path: Path, progress: Progress
) -> None:
    stranger = tmp_path / "stranger.gpg"
    stranger.write_bytes(
        run(
            ["gpg", "--export", "stranger@example.invalid"], env={"GNUPGHOME": str(keys.home)}
        ).stdout
    )
    fresh = tmp_path / "c3"
    with pytest.raises(SignatureError):
        bundle_import.import_bundle(made.bundle.path, fresh, progress=progress, keyring=stranger)
    assert not (fresh / "blobs").exists() and not (fresh / "urls").exists()


def test_a_damaged_bundle_installs_nothing(made: Made, tmp_path: Path, progress: Progress) -> None:
    damaged = tmp_path / "damaged.tar.zst"
    data = bytearray(made.bundle.path.read_bytes())
    data[len(data) // 2] ^= 0x40
    damaged.write_bytes(bytes(data))
    fresh = tmp_path / "c4"
    with pytest.raises(ChecksumError) as info:
        bundle_import.import_bundle(damaged, fresh, progress=progress)
    assert "copy it again" in str(info.value.hint)
    assert sorted(p.name for p in fresh.iterdir()) == []

    truncated = tmp_path / "truncated.tar.zst"
    truncated.write_bytes(made.bundle.path.read_bytes()[: 1 << 20])
    with pytest.raises(ChecksumError):
        bundle_import.import_bundle(truncated, fresh, progress=progress)
    assert sorted(p.name for p in fresh.iterdir()) == []


def test_bundling_needs_the_locked_image_in_the_cache(
    made: Made, tmp_path: Path, progress: Progress
) -> None:
    assert made.lock.cloud is not None
    other = dataclasses.replace(
        made.lock, cloud=dataclasses.replace(made.lock.cloud, sha256="0" * 64)
    )
    empty = dataclasses.replace(made.cfg.source, cache_dir=tmp_path / "empty")
    cfg = dataclasses.replace(made.cfg, source=empty)
    with pytest.raises(OfflineError, match="lacks the locked"):
        bundle.create_bundle(cfg, other, tmp_path / "x.tar.zst", progress=progress)
    made.script.write_text("#!/bin/sh\nexit 0\n")  # the lock no longer matches the inputs
    with pytest.raises(ConfigError, match="customize script"):
        bundle.create_bundle(made.cfg, made.lock, tmp_path / "y.tar.zst", progress=progress)
    assert not (tmp_path / "x.tar.zst").exists() and not (tmp_path / "y.tar.zst").exists()


def test_bootstrap_bundle_ships_the_cached_base(tmp_path: Path, progress: Progress) -> None:
    online = resolve(
        {
            "series": "bookworm",
            "base": "bootstrap",
            "cache_dir": str(tmp_path / "a"),
            "offline": True,
        },
        environ={},
    )
    rec = bootrecipe.recipe(online)
    src = tmp_path / "a" / "bootstrap" / rec.name
    src.mkdir(parents=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", src / "disk.qcow2", "64M"])
    versions = {"libc6": "2.36-9+deb12u7", "systemd": "252.26-1~deb12u2"}
    meta = {
        "key": rec.key,
        "origin": rec.origin,
        "date": 1717236000,
        "kernel": rec.kernel,
        "versions": versions,
    }
    (src / "meta.json").write_text(json.dumps(meta))
    lk = lock.resolve_lock(online, progress)
    info = bundle.create_bundle(online, lk, tmp_path / "b.tar.zst", progress=progress)
    names = [m.name for m in info.members]
    assert (
        f"bootstrap/{rec.name}/disk.qcow2" in names and f"bootstrap/{rec.name}/meta.json" in names
    )
    assert "keyrings/debian-archive-keyring.gpg" in names

    res = bundle_import.import_bundle(info.path, tmp_path / "b", progress=progress)
    cfg = lock.config_from_lock(res.lock, {"cache_dir": str(tmp_path / "b"), "offline": True})
    lock_check.check_locked(cfg, res.lock)
    base = bootstrap.bootstrap_base(cfg, progress)  # a cache hit: no root, no mirror
    assert base.path == tmp_path / "b" / "bootstrap" / rec.name / "disk.qcow2"
    assert base.path.read_bytes() == (src / "disk.qcow2").read_bytes()
    lock_check.check_base(base, res.lock)


# ---- no network at all ------------------------------------------------------------------------

CHILD = """
import json, socket, sys
from pathlib import Path
from imagebuilder.repro import bundle_import, lock, lock_check
from imagebuilder.sources import images
from imagebuilder.progress import Progress

bundle_path, cache_dir, server_port = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
reach = {}
for host, port in (("127.0.0.1", server_port), ("151.101.2.132", 80)):
    try:
        socket.create_connection((host, port), timeout=3).close()
        reach[host] = "connected"
    except OSError as exc:
        reach[host] = type(exc).__name__
res = bundle_import.import_bundle(bundle_path, cache_dir, progress=Progress())
found = {}
for offline in (True, False):  # a cache hit needs no HTTP, even without --offline
    cfg = lock.config_from_lock(res.lock, {"cache_dir": str(cache_dir), "offline": offline,
                                           "customize": str(res.customize)})
    lock_check.check_locked(cfg, res.lock)
    base = images.fetch_base_image(lock_check.pin_config(cfg, res.lock), Progress())
    lock_check.check_base(base, res.lock)
    found[str(offline)] = base.sha256
print(json.dumps({"reach": reach, "found": found}))
"""


@pytest.mark.root
def test_offline_lookup_inside_a_network_namespace_with_no_route(
    made: Made, server: CloudImages, tmp_path: Path
) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    hits_before = server.count()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            "unshare",
            "--net",
            "--",
            sys.executable,
            "-c",
            textwrap.dedent(CHILD),
            str(made.bundle.path),
            str(tmp_path / "netns-cache"),
            str(port),
        ],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    out: dict[str, Any] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert out["reach"] == {"127.0.0.1": "OSError", "151.101.2.132": "OSError"}  # no route at all
    assert out["found"] == {"True": made.img.sha256, "False": made.img.sha256}
    assert server.count() == hits_before  # the fake server saw nothing from the namespace
