"""Bootstrap recipe: cache key, package set, partition table, cache hits, offline.

Fast tests: no mmdebstrap, no VM. The partition table is checked by running the
real sfdisk on a sparse file; the loop/mkfs test needs root. The full build and
boot live in test_bootstrap_vm.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.base import bootloader, bootstrap, disklayout, hostcheck, mounts, rootfs
from imagebuilder.base import recipe as bootrecipe
from imagebuilder.base.bootstrap import bootstrap_base
from imagebuilder.base.recipe import Recipe, recipe
from imagebuilder.config.tree import Config, resolve
from imagebuilder.errors import BootstrapError, OfflineError, host_package_hint
from imagebuilder.families import catalogue, debian, ubuntu
from imagebuilder.families.apt_bootstrap import package_set
from imagebuilder.progress import Event, Progress


def cfg_for(series: str = "bookworm", tmp: Path | None = None, **opts: Any) -> Config:
    cli: dict[str, Any] = {"series": series, "base": "bootstrap", **opts}
    if tmp is not None:
        cli["cache_dir"] = str(tmp)
    return resolve(cli, environ={})


# ---- package set ----------------------------------------------------------------------


def test_package_set_has_what_a_maas_cloud_image_needs() -> None:
    pkgs = package_set(catalogue.get("bookworm"), "amd64")
    for need in (
        "linux-image-amd64",
        "cloud-init",
        "cloud-guest-utils",
        "openssh-server",
        "sudo",
        "locales",
        "netplan.io",
        "systemd-resolved",
        "ca-certificates",
        "grub-efi-amd64",
        "grub-efi-amd64-signed",
        "shim-signed",
        "grub-pc-bin",
        "efibootmgr",
    ):
        assert need in pkgs, need
    assert "ifupdown" not in pkgs
    assert "grub-pc" not in pkgs  # conflicts with grub-efi-amd64; grub-pc-bin boots BIOS
    assert list(pkgs) == sorted(set(pkgs))


def test_package_set_follows_release_and_arch() -> None:
    jammy = package_set(catalogue.get("jammy"), "amd64")
    assert "linux-generic" in jammy
    assert "systemd-resolved" not in jammy  # part of systemd before 23.04
    assert "systemd-resolved" in package_set(catalogue.get("noble"), "amd64")
    assert "systemd-resolved" not in package_set(catalogue.get("bullseye"), "amd64")
    arm = package_set(catalogue.get("bookworm"), "arm64")
    assert "linux-image-arm64" in arm and "grub-efi-arm64" in arm
    assert "grub-pc-bin" not in arm
    with pytest.raises(BootstrapError):
        package_set(catalogue.get("bookworm"), "riscv64")


def test_extra_packages_are_added_sorted(tmp_path: Path) -> None:
    rec = recipe(cfg_for(tmp=tmp_path, extra_packages="vim,htop"))
    assert "vim" in rec.packages and "htop" in rec.packages
    assert list(rec.packages) == sorted(rec.packages)


# ---- cache key ----------------------------------------------------------------------


def test_cache_key_is_stable_and_ignores_package_order(tmp_path: Path) -> None:
    a = recipe(cfg_for(tmp=tmp_path, extra_packages="vim,htop"))
    b = recipe(cfg_for(tmp=tmp_path, extra_packages="htop,vim"))
    assert a.key == b.key and len(a.key) == 64
    assert a.name == f"bookworm-amd64-{a.key[:16]}"
    assert recipe(cfg_for(tmp=tmp_path / "other")).key == recipe(cfg_for(tmp=tmp_path)).key


@pytest.mark.parametrize(
    "change",
    [
        {"extra_packages": "vim"},
        {"mirror": "http://mirror.example/debian"},
        {"arch": "arm64"},
        {"series": "trixie"},
    ],
)
def test_cache_key_changes_with_the_recipe(tmp_path: Path, change: dict[str, str]) -> None:
    base = recipe(cfg_for(tmp=tmp_path))
    series = change.pop("series", "bookworm")
    assert recipe(cfg_for(series, tmp=tmp_path, **change)).key != base.key


def test_cache_key_changes_with_the_recipe_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = recipe(cfg_for(tmp=tmp_path)).key
    monkeypatch.setattr(bootrecipe, "RECIPE_VERSION", bootrecipe.RECIPE_VERSION + 1)
    assert recipe(cfg_for(tmp=tmp_path)).key != before


# ---- mirrors and sources ------------------------------------------------------------


def test_debian_defaults_and_sources(tmp_path: Path) -> None:
    rec = recipe(cfg_for(tmp=tmp_path))
    assert rec.mirror == "http://deb.debian.org/debian"
    assert rec.keyring == debian.ARCHIVE_KEYRING
    assert rec.origin == "mmdebstrap bookworm http://deb.debian.org/debian"
    assert rec.sources() == [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    ]


def test_ubuntu_uses_its_archive_keyring_and_components(tmp_path: Path) -> None:
    rec = recipe(cfg_for("jammy", tmp=tmp_path, mirror="http://mirror.lan/ubuntu/"))
    assert rec.mirror == "http://mirror.lan/ubuntu"
    assert rec.keyring == ubuntu.ARCHIVE_KEYRING
    assert rec.kernel == "linux-generic"
    assert rec.sources() == [
        "deb http://mirror.lan/ubuntu jammy main universe",
        "deb http://mirror.lan/ubuntu jammy-updates main universe",
        "deb http://mirror.lan/ubuntu jammy-security main universe",
    ]
    assert recipe(cfg_for("jammy", tmp=tmp_path)).mirror == ubuntu.ARCHIVE
    assert recipe(cfg_for("jammy", tmp=tmp_path, arch="arm64")).mirror == ubuntu.PORTS


def test_mmdebstrap_argv(tmp_path: Path) -> None:
    rec = recipe(cfg_for(tmp=tmp_path, extra_packages="vim"))
    argv = rec.tool.argv(rootfs.job(rec, tmp_path / "root"))
    assert argv[0] == "mmdebstrap"
    assert "--variant=minbase" in argv and "--mode=root" in argv and "--arch=amd64" in argv
    include = next(a for a in argv if a.startswith("--include="))
    assert include.removeprefix("--include=").split(",") == list(rec.packages)
    tail = argv[argv.index("bookworm") :]
    assert tail == ["bookworm", str(tmp_path / "root"), *rec.sources()]


def test_grub_defaults_put_the_console_on_serial() -> None:
    text = bootloader.grub_defaults("amd64")
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="console=tty1 console=ttyS0"' in text
    assert 'GRUB_TERMINAL="serial console"' in text
    assert "GRUB_TIMEOUT=1" in text
    assert "ttyAMA0" in bootloader.grub_defaults("arm64")


def test_fstab_mounts_by_label_like_a_cloud_image() -> None:
    lines = [line.split("\t") for line in bootloader.FSTAB.splitlines()]
    assert lines[0][:3] == ["LABEL=cloudimg-rootfs", "/", "ext4"]
    assert lines[1][:3] == ["LABEL=UEFI", "/boot/efi", "vfat"]
    assert "nofail" in lines[1][3]


# ---- partition table --------------------------------------------------------------


def test_layout_ids_are_derived_from_the_seed() -> None:
    a, b = disklayout.cloudimg_layout("k1"), disklayout.cloudimg_layout("k1")
    c = disklayout.cloudimg_layout("k2")
    assert a == b and a.disk_guid != c.disk_guid and a.root_uuid != c.root_uuid
    ids = {a.disk_guid, a.root_uuid.upper(), *(p.uuid for p in a.partitions)}
    assert len(ids) == 5
    assert len(a.esp_serial) == 8 and int(a.esp_serial, 16) >= 0
    with pytest.raises(ValueError):
        disklayout.cloudimg_layout("k", size=512 * disklayout.MIB)


def test_partition_table_matches_an_ubuntu_cloud_image(tmp_path: Path) -> None:
    layout = disklayout.cloudimg_layout("seed", 3 * disklayout.GIB)
    img = tmp_path / "disk.raw"
    disklayout.create_raw(img, layout)
    assert img.stat().st_size == 3 * disklayout.GIB
    assert img.stat().st_blocks * 512 < 2 * disklayout.MIB  # sparse
    out = subprocess.run(["sfdisk", "--json", img], capture_output=True, check=True).stdout
    table = json.loads(out)["partitiontable"]
    assert table["label"] == "gpt" and table["id"] == layout.disk_guid
    parts = {int(p["node"].removeprefix(str(img))): p for p in table["partitions"]}
    assert sorted(parts) == [1, 14, 15]
    assert parts[14]["type"] == disklayout.BIOS_BOOT_TYPE
    assert (parts[14]["start"], parts[14]["size"]) == (2048, 8192)  # 4 MiB
    assert parts[15]["type"] == disklayout.ESP_TYPE
    assert (parts[15]["start"], parts[15]["size"]) == (10240, 217088)  # 106 MiB
    assert parts[1]["type"] == disklayout.LINUX_FS_TYPE
    assert parts[1]["start"] == parts[15]["start"] + parts[15]["size"]  # right after the ESP
    last_usable = table["lastlba"]
    assert parts[1]["start"] + parts[1]["size"] > last_usable - 2048  # runs to the end
    for n, p in parts.items():
        assert p["uuid"] == layout.partition(n).uuid


@pytest.mark.root
def test_partitions_format_with_labels_and_fixed_ids(tmp_path: Path) -> None:
    layout = disklayout.cloudimg_layout("fmt-seed", 1 * disklayout.GIB)
    img = tmp_path / "disk.raw"
    disklayout.create_raw(img, layout)
    with mounts.attached(img, layout) as dev:
        disklayout.format_partitions(dev, layout, epoch=1700000000)
        root = disklayout.partition_device(dev, 1)
        esp = disklayout.partition_device(dev, 15)
        blkid = subprocess.run(
            ["blkid", "-o", "export", root, esp], capture_output=True, text=True, check=True
        ).stdout
        features = subprocess.run(
            ["dumpe2fs", "-h", root], capture_output=True, text=True, check=True
        ).stdout
    assert f"UUID={layout.root_uuid}" in blkid and "LABEL=cloudimg-rootfs" in blkid
    assert "LABEL=UEFI" in blkid and "TYPE=vfat" in blkid
    serial = layout.esp_serial.upper()
    assert f"UUID={serial[:4]}-{serial[4:]}" in blkid
    assert "orphan_file" not in features and "metadata_csum_seed" not in features
    assert "metadata_csum" in features
    left = subprocess.run(["losetup", "-j", img], capture_output=True, text=True).stdout
    assert left == ""  # detached again


def test_esp_stub_config_finds_the_root_by_uuid() -> None:
    text = bootloader.esp_stub_config("abcd")
    assert text.splitlines()[0] == "search.fs_uuid abcd root"
    assert "configfile $prefix/grub.cfg" in text
    assert bootloader.removable_loader("amd64") == "EFI/BOOT/BOOTX64.EFI"
    assert bootloader.removable_loader("arm64") == "EFI/BOOT/BOOTAA64.EFI"


def test_mounts_under_sees_only_the_tree(tmp_path: Path) -> None:
    assert mounts.mounts_under(tmp_path) == []
    assert Path("/") in mounts.mounts_under(Path("/"))


# ---- cache and offline ------------------------------------------------------------


def _fake_cached(cache_dir: Path, rec: Recipe) -> Path:
    dest = cache_dir / "bootstrap" / rec.name
    dest.mkdir(parents=True)
    (dest / "disk.qcow2").write_bytes(b"QFI\xfb")
    meta = {"key": rec.key, "origin": rec.origin, "date": 1700000000, "kernel": rec.kernel}
    (dest / "meta.json").write_text(json.dumps(meta))
    return dest


def test_a_cached_base_is_returned_without_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = cfg_for(tmp=tmp_path, offline=True)
    dest = _fake_cached(tmp_path, recipe(cfg))

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not build")

    monkeypatch.setattr(bootstrap, "_build", no_build)
    t0 = time.monotonic()
    base = bootstrap_base(cfg, Progress())
    assert time.monotonic() - t0 < 0.5
    assert base.path == dest / "disk.qcow2" and base.format == "qcow2"
    assert base.kind == "bootstrap" and base.kernel == "linux-image-amd64"
    assert base.date == 1700000000 and base.sha256 == recipe(cfg).key
    assert base.origin == "mmdebstrap bookworm http://deb.debian.org/debian"


def test_offline_without_cache_names_the_key_and_the_fix(tmp_path: Path) -> None:
    cfg = cfg_for(tmp=tmp_path, offline=True)
    with pytest.raises(OfflineError) as info:
        bootstrap_base(cfg, Progress())
    rec = recipe(cfg)
    assert rec.name in info.value.message
    assert info.value.hint is not None and "without --offline" in info.value.hint
    assert not (tmp_path / "bootstrap").exists()  # nothing half-made


def test_a_stale_cache_entry_is_not_used(tmp_path: Path) -> None:
    cfg = cfg_for(tmp=tmp_path, offline=True)
    dest = _fake_cached(tmp_path, recipe(cfg))
    (dest / "meta.json").write_text(json.dumps({"key": "0" * 64}))
    with pytest.raises(OfflineError):
        bootstrap_base(cfg, Progress())


def test_building_needs_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(BootstrapError) as info:
        bootstrap_base(cfg_for(tmp=tmp_path), Progress())
    assert "root" in info.value.message


def test_release_date_is_the_newest_release_file(tmp_path: Path) -> None:
    lists = tmp_path / "var/lib/apt/lists"
    lists.mkdir(parents=True)
    (lists / "a_dists_bookworm_InRelease").write_text(
        "Origin: Debian\nDate: Sat, 06 Sep 2025 09:00:00 UTC\nSuite: stable\n"
    )
    (lists / "a_dists_bookworm-updates_InRelease").write_text(
        "Date: Sun, 07 Sep 2025 09:00:00 UTC\n"
    )
    (lists / "a_dists_bookworm_main_binary-amd64_Packages").write_text("Date: junk\n")
    tool = recipe(cfg_for(tmp=tmp_path)).tool
    assert rootfs.release_date(tmp_path, tool) == 1757235600
    assert rootfs.release_date(tmp_path / "none", tool) is None


def test_mmdebstrap_failure_carries_the_log_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(b"")
    rec = dataclasses.replace(recipe(cfg_for(tmp=tmp_path)), keyring=str(keyring))
    fake = tmp_path / "mmdebstrap"
    fake.write_text("#!/bin/sh\necho 'I: starting'\necho 'E: Unable to locate package nosuch'\n"
                    "exit 1\n")  # fmt: skip
    fake.chmod(0o755)
    real = rec.tool
    faked = dataclasses.replace(real, argv=lambda job: [str(fake)])
    monkeypatch.setattr(bootrecipe, "_tool", lambda family: faked)
    events: list[Event] = []
    log = tmp_path / "bootstrap.log"
    with pytest.raises(BootstrapError) as info:
        rootfs.run_tool(rec, tmp_path, log, Progress(events.append), epoch=None)
    assert "exit 1" in info.value.message
    assert "Unable to locate package nosuch" in info.value.details
    assert info.value.hint is not None and rec.mirror in info.value.hint
    assert any(e.name == "mmdebstrap: starting" for e in events)


def test_missing_host_tools_are_named_with_their_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("imagebuilder.run.which", _which_without({"mcopy", "mdir"}))
    assert hostcheck.missing_tools() == {"mcopy": "mtools", "mdir": "mtools"}
    with pytest.raises(BootstrapError) as info:
        bootstrap_base(cfg_for(tmp=tmp_path), Progress())
    assert "mcopy" in info.value.message and info.value.hint == host_package_hint("mtools")


def test_a_foreign_arch_bootstrap_asks_for_the_tool_s_extra_programs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("imagebuilder.run.which", _which_without({"arch-test"}))
    assert hostcheck.missing_tools({"mmdebstrap": "mmdebstrap"}) == {}
    assert hostcheck.missing_tools({"mmdebstrap": "mmdebstrap", "arch-test": "arch-test"}) == {
        "arch-test": "arch-test"
    }
    monkeypatch.setattr(hostcheck, "emulated", lambda arch: arch == "arm64")
    with pytest.raises(BootstrapError) as info:
        bootstrap_base(cfg_for(tmp=tmp_path, arch="arm64"), Progress())
    assert "arch-test" in info.value.message and info.value.hint == host_package_hint("arch-test")


def _which_without(absent: set[str]) -> Any:
    from imagebuilder.errors import ToolNotFoundError

    def which(tool: str) -> str:
        if tool in absent:
            raise ToolNotFoundError(tool)
        return f"/usr/bin/{tool}"

    return which


def test_boot_config_is_written_before_packages(tmp_path: Path) -> None:
    bootloader.write_boot_config(tmp_path, "amd64")
    assert (tmp_path / "etc/fstab").read_text() == bootloader.FSTAB
    assert "ttyS0" in (tmp_path / "etc/default/grub.d/50-imagebuilder.cfg").read_text()
    conf = tmp_path / "etc/initramfs-tools/conf.d"
    assert (conf / "resume").read_text() == "RESUME=none\n"
    assert "FSTYPE=ext4" in (conf / "imagebuilder-fstype").read_text()
    assert (tmp_path / "boot/efi").is_dir()


def test_hygiene_after_packages(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "ssh").mkdir(parents=True)
    for name in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "sshd_config"):
        (etc / "ssh" / name).write_text("x")
    (etc / "machine-id").write_text("0123456789abcdef\n")
    (etc / "resolv.conf").write_text("nameserver 10.0.0.1\n")
    (etc / "fstab").write_text("# UNCONFIGURED FSTAB FOR BASE SYSTEM\n")
    (tmp_path / "usr/lib/systemd").mkdir(parents=True)
    (tmp_path / "usr/lib/systemd/systemd-resolved").write_text("")
    lists = tmp_path / "var/lib/apt/lists"
    (lists / "partial").mkdir(parents=True)
    (lists / "lock").write_text("")
    (lists / "x_InRelease").write_text("Date: now\n")
    rec = recipe(cfg_for(tmp=tmp_path / "cache"))
    rootfs.write_files(tmp_path, rec, before_packages=False)
    assert sorted(p.name for p in (etc / "ssh").iterdir()) == ["sshd_config"]
    assert (etc / "machine-id").read_text() == ""
    assert (etc / "hostname").read_text() == "localhost\n"
    assert (etc / "fstab").read_text() == bootloader.FSTAB
    assert os.readlink(etc / "resolv.conf") == "../run/systemd/resolve/stub-resolv.conf"
    assert sorted(p.name for p in lists.iterdir()) == ["lock", "partial"]


def test_a_failed_build_leaves_only_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = cfg_for(tmp=tmp_path)
    rec = recipe(cfg)
    stale = tmp_path / "bootstrap" / f".tmp-{rec.name}-killed"
    (stale / "root").mkdir(parents=True)  # what a SIGKILLed build leaves

    def failing_build(rec: Recipe, work: Path, log: Path, *args: Any, **kwargs: Any) -> None:
        log.write_text("I: downloading\nE: the mirror went away\n")
        raise BootstrapError("mmdebstrap bookworm failed (exit 1)", details="E: the mirror")

    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr(hostcheck, "missing_tools", lambda extra=None: {})
    monkeypatch.setattr(bootstrap, "_build", failing_build)
    with pytest.raises(BootstrapError) as info:
        bootstrap_base(cfg, Progress())
    kept = tmp_path / "logs" / f"bootstrap-{rec.name}.log"
    assert kept.read_text().endswith("E: the mirror went away\n")
    assert f"full log: {kept}" in info.value.details
    assert not list((tmp_path / "bootstrap").glob(".tmp-*"))
    assert not (tmp_path / "bootstrap" / rec.name).exists()
