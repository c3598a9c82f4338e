"""The lock file: canonical TOML round-trip, resolving, and ``--locked`` refusing drift.

Cloud locks resolve against the fake cloud-images server (real HTTP, real gpg);
bootstrap locks read versions from a cached base (meta.json, or the disk itself
through qemu-img + debugfs, rootless) or resolve them with the host's apt against a
signed local file:// mirror made here. Nothing is mocked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.base import bootstrap, pkgversions
from imagebuilder.base import recipe as bootrecipe
from imagebuilder.config.tree import Config, resolve
from imagebuilder.errors import ChecksumError, ConfigError, DownloadError, OfflineError, SourceError
from imagebuilder.families import aptresolve
from imagebuilder.progress import Progress
from imagebuilder.repro import lock, lock_check
from imagebuilder.repro.lock import BootstrapPin, CloudPin, Inputs, Lock
from imagebuilder.run import run
from imagebuilder.sources import images
from imagebuilder.vm import seed
from tests.fakes.cloudimages import MTIME, CloudImages, FakeImage, GpgKeys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture
def script(tmp_path: Path) -> Path:
    p = tmp_path / "customize.sh"
    p.write_text("#!/bin/sh\necho deterministic > /etc/imagebuilder-test\n")
    p.chmod(0o755)
    return p


def cloud_cfg(srv: CloudImages, keys: GpgKeys, tmp: Path, **values: Any) -> Config:
    base: dict[str, Any] = {
        "series": "jammy",
        "mirror": srv.url,
        "cache_dir": str(tmp / "c"),
        "keyring": str(keys.keyring),
    }
    return resolve({**base, **values}, environ={})


def boot_cfg(tmp: Path, **values: Any) -> Config:
    base = {"series": "bookworm", "base": "bootstrap", "cache_dir": str(tmp / "c")}
    return resolve({**base, **values}, environ={})


def sample_inputs() -> Inputs:
    seeds = {"user-data.yaml.in": "644 " + "a" * 64}
    return Inputs(seeds, {}, "built-in", customize="b" * 64, customize_name="c.sh")


def sample_locks() -> list[Lock]:
    cloud = CloudPin('http://x/"q"\\ü/img', "img", "c" * 64, 10, MTIME, "20240507", "gpg k\n")
    boot = BootstrapPin(
        suite="bookworm",
        mirror="http://deb.debian.org/debian",
        sources=("deb a b c",) * 2,
        keyring="/k.gpg",
        keyring_sha256="d" * 64,
        requested=("a", "b", "c", "d", "e"),
        recipe_key="e" * 64,
        resolved_from="apt",
        release_dates={"bookworm": 1700000000},
        packages={"libc6": "2.36-9+deb12u7", "g++-12": "12.2.0-14", "zz": "1:2~rc1"},
    )
    http = {"dir/f": "644 " + "f" * 64, "l": "link ../x"}
    return [
        Lock(
            "0.1.0",
            "jammy",
            "amd64",
            "cloud",
            {"released": True, "packages": ["a"]},
            sample_inputs(),
            cloud=cloud,
        ),
        Lock(
            "0.1.0",
            "bookworm",
            "arm64",
            "bootstrap",
            {},
            dataclasses.replace(sample_inputs(), customize=None, http_dir=http),
            bootstrap=boot,
        ),
    ]


# ---- the file ---------------------------------------------------------------------------------


@pytest.mark.parametrize("which", [0, 1], ids=["cloud", "bootstrap"])
def test_lock_round_trips_canonically(tmp_path: Path, which: int) -> None:
    lk = sample_locks()[which]
    text = lock.to_toml(lk)
    tomllib.loads(text)  # valid TOML for any TOML reader
    assert lock.from_toml(text) == lk
    path = lock.write_lock(lk, tmp_path / "sub" / "imagebuilder.lock")
    assert path.read_text() == text and not list(path.parent.glob(".*partial"))
    back = lock.read_lock(path)
    assert back == lk and back.path == path and lock.to_toml(back) == text
    assert back.digest == lk.digest == hashlib.sha256(text.encode()).hexdigest()
    # Comments, layout and key order do not change the digest; content does.
    assert lock.from_toml("# edited by hand\n" + text).digest == lk.digest
    shuffled = dataclasses.replace(
        lk, inputs=dataclasses.replace(lk.inputs, seeds={"z": "1", "a": "2"})
    )
    ordered = dataclasses.replace(
        lk, inputs=dataclasses.replace(lk.inputs, seeds={"a": "2", "z": "1"})
    )
    assert shuffled.digest == ordered.digest
    if lk.bootstrap is not None:
        bumped = dict(lk.bootstrap.packages, libc6="2.36-9+deb12u8")
        other = dataclasses.replace(
            lk, bootstrap=dataclasses.replace(lk.bootstrap, packages=bumped)
        )
    else:
        other = dataclasses.replace(lk, tool_version="0.2.0")
    assert other.digest != lk.digest


def test_damaged_lock_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        lock.read_lock(tmp_path / "nope.lock")
    assert "not found" in info.value.message and "imagebuilder lock" in str(info.value.hint)
    good = lock.to_toml(sample_locks()[0])
    cases = {
        "not toml": "not valid TOML",
        good.replace("lock_version = 1", "lock_version = 9"): "lock_version 9",
        good.replace("[cloud]", "[cloudy]"): "without its [cloud] table",
        good.replace('sha256 = "', 'sha257 = "'): "missing or malformed",
    }
    for text, expect in cases.items():
        (tmp_path / "x.lock").write_text(text)
        with pytest.raises(ConfigError) as info:
            lock.read_lock(tmp_path / "x.lock")
        assert expect in info.value.message, info.value.message
        assert str(tmp_path / "x.lock") in info.value.message


# ---- cloud locks --------------------------------------------------------------------------------


def locked_cloud(
    server: CloudImages, keys: GpgKeys, tmp: Path, script: Path
) -> tuple[FakeImage, Config, Lock]:
    img = server.ubuntu("jammy")
    cfg = cloud_cfg(server, keys, tmp, customize=str(script))
    return img, cfg, lock.resolve_lock(cfg, Progress())


def test_cloud_lock_pins_the_verified_image_and_the_inputs(
    server: CloudImages, keys: GpgKeys, tmp_path: Path, script: Path
) -> None:
    img, cfg, lk = locked_cloud(server, keys, tmp_path, script)
    assert lk.cloud is not None and lk.bootstrap is None
    assert (lk.series, lk.arch, lk.base) == ("jammy", "amd64", "cloud")
    assert (lk.cloud.url, lk.cloud.sha256, lk.cloud.size) == (img.url, img.sha256, len(img.data))
    assert lk.cloud.date == MTIME and lk.cloud.verified.startswith("gpg ")
    assert lk.options == {"mirror": server.url}
    assert lk.inputs.customize == hashlib.sha256(script.read_bytes()).hexdigest()
    assert lk.inputs.customize_name == "customize.sh"
    assert "user-data.yaml.in" in lk.inputs.seeds
    assert lk.inputs.seeds["user-data.yaml.in"].startswith("644 ")
    lock_check.check_locked(cfg, lk)
    lock_check.check_locked(
        dataclasses.replace(cfg, source=dataclasses.replace(cfg.source, offline=True)), lk
    )
    base = images.fetch_base_image(lock_check.pin_config(cfg, lk), Progress())
    lock_check.check_base(base, lk)
    assert (
        lock.config_from_lock(lk, {"cache_dir": cfg.source.cache_dir}).source.mirror == server.url
    )


def test_the_serial_of_a_daily_image_is_recorded(
    server: CloudImages, keys: GpgKeys, tmp_path: Path
) -> None:
    server.ubuntu("jammy")
    server.put("/jammy/current/unpacked/build-info.txt", b"build_name=server\nserial=20240507\n")
    lk = lock.resolve_lock(cloud_cfg(server, keys, tmp_path), Progress())
    assert lk.cloud is not None and lk.cloud.serial == "20240507"
    pinned = server.ubuntu("jammy", folder="20240401", seed=3)
    lk = lock.resolve_lock(cloud_cfg(server, keys, tmp_path, serial="20240401"), Progress())
    assert lk.cloud is not None and (lk.cloud.serial, lk.cloud.url) == ("20240401", pinned.url)
    assert lk.options["serial"] == "20240401"


def test_locked_refuses_a_changed_customize_script(
    server: CloudImages, keys: GpgKeys, tmp_path: Path, script: Path
) -> None:
    _, cfg, lk = locked_cloud(server, keys, tmp_path, script)
    script.write_text(script.read_text() + "echo one more line\n")
    with pytest.raises(ConfigError) as info:
        lock_check.check_locked(cfg, lk)
    msg = info.value.message
    assert msg.startswith(
        "--locked: 1 input(s) differ from the lock: customize script customize.sh"
    )
    assert lk.inputs.customize is not None and lk.inputs.customize[:12] in msg
    assert "imagebuilder lock" in str(info.value.hint)
    no_script = dataclasses.replace(
        cfg, provision=dataclasses.replace(cfg.provision, customize=None)
    )
    with pytest.raises(ConfigError, match="customize script: none now, one in the lock"):
        lock_check.check_locked(no_script, lk)


def test_locked_refuses_a_different_base_sha(
    server: CloudImages, keys: GpgKeys, tmp_path: Path, script: Path
) -> None:
    img, cfg, lk = locked_cloud(server, keys, tmp_path, script)
    assert lk.cloud is not None
    other = dataclasses.replace(lk, cloud=dataclasses.replace(lk.cloud, sha256="0" * 64))
    with pytest.raises(ConfigError) as info:
        lock_check.check_locked(cfg, other)
    assert f"the cache holds sha256 {img.sha256[:16]}" in info.value.message
    base = images.fetch_base_image(cfg, Progress())
    with pytest.raises(ConfigError, match="the base image is sha256"):
        lock_check.check_base(base, other)
    # Pinned, sources refuse other content outright (here: after downloading it).
    with pytest.raises(ChecksumError):
        images.fetch_base_image(lock_check.pin_config(cfg, other), Progress())


def test_every_difference_is_named_at_once(
    server: CloudImages, keys: GpgKeys, tmp_path: Path, script: Path
) -> None:
    lk = locked_cloud(server, keys, tmp_path, script)[2]
    script.write_text("#!/bin/sh\n")
    moved = dataclasses.replace(lk, tool_version="0.0.9")
    with pytest.raises(ConfigError) as info:
        lock_check.check_locked(
            cloud_cfg(server, keys, tmp_path, customize=str(script), serial="2"), moved
        )
    msg = info.value.message
    assert msg.startswith("--locked: 3 input(s) differ")
    assert "imagebuilder 0.1.0 now, 0.0.9 in the lock" in msg
    assert "base image URL: " in msg and "/jammy/2/" in msg
    assert "customize script customize.sh" in msg


def test_locked_refuses_changed_seed_templates(
    server: CloudImages,
    keys: GpgKeys,
    tmp_path: Path,
    script: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seeds = tmp_path / "seeds"
    shutil.copytree(seed.SEEDS_DIR, seeds)
    monkeypatch.setattr(seed, "SEEDS_DIR", seeds)
    _, cfg, lk = locked_cloud(server, keys, tmp_path, script)
    (seeds / "user-data.yaml.in").write_text("#cloud-config\n")
    (seeds / "extra.in").write_text("x")
    with pytest.raises(ConfigError) as info:
        lock_check.check_locked(cfg, lk)
    assert (
        "seed templates (seeds/): user-data.yaml.in changed, extra.in added" in info.value.message
    )


# ---- bootstrap locks -----------------------------------------------------------------------

VERSIONS = {
    "base-files": "12.4+deb12u5",
    "libc6": "2.36-9+deb12u7",
    "linux-image-amd64": "6.1.90-1",
}


def fake_base(cfg: Config, versions: dict[str, str] | None, disk: Path | None = None) -> Path:
    """A bootstrap base in the cache as bootstrap.py leaves one (meta.json + disk.qcow2)."""
    rec = bootrecipe.recipe(cfg)
    dest = cfg.source.cache_dir / "bootstrap" / rec.name
    dest.mkdir(parents=True)
    if disk is not None:
        shutil.copyfile(disk, dest / "disk.qcow2")
    else:
        (dest / "disk.qcow2").write_bytes(b"QFI\xfb")
    meta: dict[str, Any] = {
        "key": rec.key,
        "origin": rec.origin,
        "date": 1700000000,
        "kernel": rec.kernel,
        "packages": list(rec.packages),
    }
    if versions is not None:
        meta["versions"] = versions
    (dest / "meta.json").write_text(json.dumps(meta))
    return dest


def test_bootstrap_lock_from_a_cached_base(tmp_path: Path) -> None:
    cfg = boot_cfg(tmp_path, offline=True)
    dest = fake_base(cfg, VERSIONS)
    lk = lock.resolve_lock(cfg, Progress())
    assert lk.bootstrap is not None and lk.cloud is None
    assert lk.bootstrap.packages == VERSIONS
    assert lk.bootstrap.requested == bootrecipe.recipe(cfg).packages
    assert lk.bootstrap.resolved_from == f"base disk {dest.name}"
    assert lk.bootstrap.mirror == "http://deb.debian.org/debian"
    lock_check.check_locked(cfg, lk)
    base = bootstrap.bootstrap_base(cfg, Progress())
    lock_check.check_base(base, lk)

    (dest / "meta.json").write_text(
        (dest / "meta.json").read_text().replace("2.36-9+deb12u7", "2.36-9+deb12u8")
    )
    with pytest.raises(ConfigError) as info:
        lock_check.check_locked(cfg, lk)
    assert "libc6 2.36-9+deb12u7 -> 2.36-9+deb12u8" in info.value.message
    with pytest.raises(ConfigError) as info:
        lock_check.check_base(base, lk)
    assert "1 package(s) other than the lock pins: libc6 2.36-9+deb12u7 -> 2.36-9+deb12u8" in (
        info.value.message
    )


def test_bootstrap_package_list_and_mirror_changes_are_refused(tmp_path: Path) -> None:
    cfg = boot_cfg(tmp_path, offline=True)
    fake_base(cfg, VERSIONS)
    lk = lock.resolve_lock(cfg, Progress())
    other = boot_cfg(
        tmp_path, offline=True, extra_packages="htop", mirror="http://mirror.example/debian"
    )
    with pytest.raises(ConfigError) as info:
        lock_check.check_locked(other, lk)
    msg = info.value.message
    assert "bootstrap mirror: http://mirror.example/debian now" in msg
    assert "bootstrap package list: +htop" in msg


def test_bootstrap_lock_offline_without_a_base_says_how(tmp_path: Path) -> None:
    with pytest.raises(OfflineError, match="no cached bootstrap base"):
        lock.resolve_lock(boot_cfg(tmp_path, offline=True), Progress())


def make_rootless_disk(tmp: Path, status: str) -> Path:
    """A qcow2 with a GPT whose second partition holds ext4 with /var/lib/dpkg/status."""
    root = tmp / "rootfs"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(status)
    raw = tmp / "disk.raw"
    with raw.open("wb") as f:
        f.truncate(64 << 20)
    linux = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    table = f"label: gpt\nstart=2048, size=65536, type={linux}\nstart=67584, type={linux}\n"
    run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", raw], input=table.encode())
    size_k = (131072 - 67584 - 34) // 2
    run(["mkfs.ext4", "-q", "-F", "-E", f"offset={67584 * 512}", "-d", root, raw, f"{size_k}k"])
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, tmp / "disk.qcow2"])
    return tmp / "disk.qcow2"


def test_versions_are_read_from_the_disk_when_meta_lacks_them(tmp_path: Path) -> None:
    status = (
        "Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9\n\n"
        "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n"
        "Package: zlib1g\nStatus: install ok installed\nVersion: 1:1.2.13.dfsg-1\n"
    )
    disk = make_rootless_disk(tmp_path, status)
    cfg = boot_cfg(tmp_path, offline=True)
    dest = fake_base(cfg, None, disk)
    assert pkgversions.base_versions(dest, cfg.release.family) == {
        "libc6": "2.36-9",
        "zlib1g": "1:1.2.13.dfsg-1",
    }
    lk = lock.resolve_lock(cfg, Progress())
    assert lk.bootstrap is not None and lk.bootstrap.packages["zlib1g"] == "1:1.2.13.dfsg-1"


# ---- resolving versions from a mirror, with the host's apt ---------------------------------------


def stanza(name: str, version: str, **fields: str) -> str:
    lines = [
        f"Package: {name}",
        f"Version: {version}",
        "Architecture: amd64",
        "Maintainer: t <t@example.invalid>",
        f"Filename: pool/{name}_{version}_amd64.deb",
        "Size: 100",
        "SHA256: " + "0" * 64,
        f"Description: {name}",
    ]
    lines += [f"{k.replace('_', '-').title()}: {v}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"


def publish_suite(top: Path, suite: str, stanzas: list[str], keys: GpgKeys) -> None:
    d = top / "dists" / suite
    index = d / "main/binary-amd64/Packages"
    index.parent.mkdir(parents=True)
    index.write_text("\n".join(stanzas))
    digest = hashlib.sha256(index.read_bytes()).hexdigest()
    release = (
        f"Origin: Test\nSuite: {suite}\nCodename: {suite}\n"
        "Date: Sat, 01 Jun 2024 10:00:00 UTC\nArchitectures: amd64\nComponents: main\n"
        f"SHA256:\n {digest} {index.stat().st_size} main/binary-amd64/Packages\n"
    )
    signed = run(
        ["gpg", "--batch", "--clearsign", "--local-user", "signer@example.invalid"],
        input=release.encode(),
        env={"GNUPGHOME": str(keys.home)},
    ).stdout
    (d / "InRelease").write_bytes(signed)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory, keys: GpgKeys) -> Path:
    """bookworm + bookworm-updates: Essential/required packages, a virtual package both
    provided by an essential package and real (like lsb-base), or-deps, recommends."""
    top = tmp_path_factory.mktemp("mirror") / "debian"
    publish_suite(
        top,
        "bookworm",
        [
            stanza("libc6", "2.36-9", priority="required"),
            stanza("base-files", "12.4", essential="yes", priority="required", depends="libc6"),
            stanza(
                "sysvinit-utils",
                "3.06-4",
                essential="yes",
                priority="required",
                provides="lsb-base (= 11.6)",
            ),
            stanza("lsb-base", "11.6", priority="optional"),
            stanza("init-tool", "1.0", priority="required", depends="lsb-base"),
            stanza("apt", "2.6.1", priority="required", depends="libc6"),
            stanza("py3", "1.0", priority="optional"),
            stanza(
                "cloud-init",
                "22.4",
                priority="optional",
                depends="py3 (>= 2.0), net-a | net-b",
                recommends="eatmydata",
            ),
            stanza("net-a", "1", priority="optional"),
            stanza("net-b", "1", priority="optional"),
            stanza("eatmydata", "1", priority="optional"),
            stanza("unrelated", "1", priority="optional"),
        ],
        keys,
    )
    publish_suite(top, "bookworm-updates", [stanza("py3", "2.1", priority="optional")], keys)
    return top


def test_apt_resolves_what_mmdebstrap_minbase_installs(mirror: Path, keys: GpgKeys) -> None:
    res = aptresolve.resolve_versions(
        sources=[
            f"deb file://{mirror} bookworm main",
            f"deb file://{mirror} bookworm-updates main",
        ],
        suite="bookworm",
        arch="amd64",
        keyring=keys.keyring,
        include=["cloud-init"],
    )
    assert res.packages == {
        "apt": "2.6.1",
        "base-files": "12.4",
        "cloud-init": "22.4",
        "init-tool": "1.0",
        "libc6": "2.36-9",
        "net-a": "1",
        "py3": "2.1",
        "sysvinit-utils": "3.06-4",
    }  # no lsb-base: the essential sysvinit-utils provides it; no recommends
    assert res.release_dates == {"bookworm": 1717236000, "bookworm-updates": 1717236000}


def test_apt_resolution_errors_name_the_problem(
    mirror: Path, keys: GpgKeys, tmp_path: Path
) -> None:
    src = [f"deb file://{mirror} bookworm main"]
    with pytest.raises(SourceError, match="no package no-such-pkg"):
        aptresolve.resolve_versions(
            sources=src,
            suite="bookworm",
            arch="amd64",
            keyring=keys.keyring,
            include=["no-such-pkg"],
        )
    stranger = tmp_path / "stranger.gpg"
    stranger.write_bytes(
        run(
            ["gpg", "--export", "stranger@example.invalid"], env={"GNUPGHOME": str(keys.home)}
        ).stdout
    )
    with pytest.raises(DownloadError, match="apt-get update failed"):
        aptresolve.resolve_versions(
            sources=src, suite="bookworm", arch="amd64", keyring=stranger, include=[]
        )
