"""Installer builds without a VM: a real ISO laid out like Ubuntu's live-server ISO is
built here with pycdlib, its kernel and initrd read back; the installer's qemu
command line and the autoinstall seed (parsed with PyYAML) are checked."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.config.choices import Layout
from imagebuilder.config.tree import Firmware
from imagebuilder.errors import ConfigError, SourceError
from imagebuilder.export import curtin
from imagebuilder.families import ubuntu_installer
from imagebuilder.families.catalogue import get as release
from imagebuilder.families.seam import IsoEntry
from imagebuilder.installer import boot as installer
from imagebuilder.installer import iso
from imagebuilder.vm import qemu_cmdline
from imagebuilder.vm.keys import BuildKeys
from tests.fakes.isoimage import make_iso

yaml: Any = pytest.importorskip("yaml")

KERNEL = os.urandom(3 << 20) + b"kernel-end"
INITRD = os.urandom(5 << 20) + b"initrd-end"
#: (path on the ISO, bytes); directories are made as needed.
LIVE_SERVER = {
    ".disk/info": b'Ubuntu-Server 22.04.4 LTS "Jammy Jellyfish" - Release amd64 (20240220)\n',
    "boot/grub/grub.cfg": b'menuentry "Try or Install Ubuntu Server" {\n'
    b"\tlinux\t/casper/vmlinuz  ---\n\tinitrd\t/casper/initrd\n}\n",
    "casper/vmlinuz": KERNEL,
    "casper/initrd": INITRD,
}


@pytest.fixture(scope="module")
def keys() -> BuildKeys:
    return BuildKeys.generate("installer-test")


# ---- reading the ISO --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rock_ridge", "joliet"),
    [(True, False), (True, True), (False, True), (False, False)],
    ids=["rockridge", "rockridge+joliet", "joliet", "iso9660"],
)
def test_kernel_and_initrd_read_back_from_a_live_server_iso(
    tmp_path: Path, rock_ridge: bool, joliet: bool
) -> None:
    source = make_iso(tmp_path / "live.iso", LIVE_SERVER, rock_ridge=rock_ridge, joliet=joliet)
    out = tmp_path / "out"
    out.mkdir()
    boot = installer.extract_boot_files(source, out, "amd64", ubuntu_installer.KIND)
    assert hashlib.sha256(boot.kernel.read_bytes()).digest() == hashlib.sha256(KERNEL).digest()
    assert boot.initrd.read_bytes() == INITRD
    assert sorted(p.name for p in out.iterdir()) == sorted([boot.kernel.name, boot.initrd.name])
    with iso.open_iso(source) as opened:
        assert iso.member_exists(opened, ".disk/info") == (rock_ridge or joliet)
        assert iso.member_exists(opened, "boot/grub/grub.cfg")
        assert not iso.member_exists(opened, "casper")  # a directory is not a member
    assert (
        iso.extract(source, "boot/grub/grub.cfg", tmp_path / "grub.cfg").read_bytes()
        == (LIVE_SERVER["boot/grub/grub.cfg"])
    )


def test_missing_kernel_names_the_member_and_leaves_nothing(tmp_path: Path) -> None:
    files = {k: v for k, v in LIVE_SERVER.items() if k != "casper/initrd"}
    source = make_iso(tmp_path / "bad.iso", files, rock_ridge=True, joliet=False)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SourceError, match="casper/initrd"):
        installer.extract_boot_files(source, out, "amd64", ubuntu_installer.KIND)
    assert not any(p.name.endswith(".partial") for p in out.iterdir())


def test_not_an_iso_is_a_source_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.iso"
    junk.write_bytes(b"\0" * 70000)
    with pytest.raises(SourceError, match="not a readable ISO"):
        iso.extract(junk, "casper/vmlinuz", tmp_path / "k")
    with pytest.raises(SourceError, match="not found"):
        iso.extract(tmp_path / "absent.iso", "casper/vmlinuz", tmp_path / "k")


def test_iso9660_spellings() -> None:
    assert iso.iso_names("casper/vmlinuz") == ["/CASPER/VMLINUZ.;1", "/CASPER/VMLINUZ;1"]
    assert iso.iso_names("/install.amd/initrd.gz") == ["/INSTALL.AMD/INITRD.GZ;1"]


# ---- where the ISO is ----------------------------------------------------------------------

SUMS = """\
{a} *ubuntu-22.04.3-live-server-amd64.iso
{b} *ubuntu-22.04.4-desktop-amd64.iso
{c} *ubuntu-22.04.4-live-server-amd64.iso
{d} *ubuntu-22.04.4-live-server-arm64.iso
""".format(a="a" * 64, b="b" * 64, c="C" * 64, d="d" * 64)


def test_live_server_iso_found_in_sha256sums_by_name() -> None:
    entry = ubuntu_installer.find_live_server_iso(SUMS, "amd64")
    assert entry == IsoEntry("ubuntu-22.04.4-live-server-amd64.iso", "c" * 64)
    assert ubuntu_installer.find_live_server_iso(SUMS, "arm64").sha256 == "d" * 64
    with pytest.raises(SourceError, match="no live-server ISO for riscv64"):
        ubuntu_installer.find_live_server_iso(SUMS, "riscv64")


def test_iso_directory_urls() -> None:
    jammy = release("jammy")
    assert (
        ubuntu_installer.live_server_dir_url(jammy, "amd64") == "https://releases.ubuntu.com/jammy"
    )
    assert (
        ubuntu_installer.live_server_dir_url(jammy, "arm64")
        == "https://cdimage.ubuntu.com/releases/jammy/release"
    )
    assert ubuntu_installer.live_server_dir_url(jammy, "amd64", "http://m/") == "http://m/jammy"
    debian_kind = release("bookworm").family.installer
    assert debian_kind is not None and debian_kind.iso_dir_url is None  # netboot or --iso


# ---- the installer VM -----------------------------------------------------------------------


def _spec(tmp_path: Path, arch: str = "amd64") -> qemu_cmdline.MachineSpec:
    return qemu_cmdline.MachineSpec(
        arch=arch, accel="tcg", disk=tmp_path / "disk.raw", disk_format="raw",
        serial_log=tmp_path / "serial.log", qmp_socket=tmp_path / "qmp.sock", ssh_port=2222,
        firmware=Firmware.UEFI, firmware_code=tmp_path / "code.fd",
        firmware_vars=tmp_path / "vars.fd", seed=tmp_path / "seed.iso",
    )  # fmt: skip


def _after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_installer_argv_boots_the_iso_kernel_with_autoinstall(tmp_path: Path) -> None:
    boot = installer.InstallerBoot(
        kernel=tmp_path / "vmlinuz",
        initrd=tmp_path / "initrd",
        cmdline=ubuntu_installer.kernel_cmdline("amd64"),
        cdrom=tmp_path / "live,server.iso",
    )
    spec = installer.installer_spec(_spec(tmp_path), boot, min_memory=ubuntu_installer.MIN_MEMORY)
    argv = qemu_cmdline.qemu_argv(spec)
    assert _after(argv, "-kernel") == [str(tmp_path / "vmlinuz")]
    assert _after(argv, "-initrd") == [str(tmp_path / "initrd")]
    (append,) = _after(argv, "-append")
    assert append.split() == ["autoinstall", "ds=nocloud", "console=ttyS0,115200n8"]
    assert "-no-reboot" in argv
    drives = _after(argv, "-drive")
    (cd,) = [d for d in drives if "media=cdrom" in d]
    assert f"file={tmp_path}/live,,server.iso" in cd and "readonly=on" in cd
    assert any(d.startswith("if=none,id=seed0,") and "seed.iso" in d for d in drives)
    assert "ide-cd,drive=cd0" in _after(argv, "-device")
    (netdev,) = _after(argv, "-netdev")
    forwards = [f for f in netdev.split(",") if f.startswith("hostfwd=")]
    assert forwards == ["hostfwd=tcp:127.0.0.1:2222-:22"]
    assert int(_after(argv, "-m")[0]) >= ubuntu_installer.MIN_MEMORY
    assert not any("passw" in a.lower() for a in argv)


def test_arm64_installer_uses_virtio_scsi_cdrom_and_pl011_console(tmp_path: Path) -> None:
    boot = installer.InstallerBoot(
        tmp_path / "k", tmp_path / "i", ubuntu_installer.kernel_cmdline("arm64"), tmp_path / "a.iso"
    )
    argv = installer.installer_args("arm64", boot)
    assert "scsi-cd,bus=scsi0.0,drive=cd0" in argv
    assert "console=ttyAMA0,115200n8" in _after(argv, "-append")[0]
    netboot = installer.InstallerBoot(tmp_path / "k", tmp_path / "i", "auto=true", None)
    assert not any("cdrom" in a for a in installer.installer_args("amd64", netboot))


# ---- the autoinstall answers ----------------------------------------------------------------


def _keys_named(doc: Any) -> list[str]:
    if isinstance(doc, dict):
        return [str(k) for k in doc] + [k for v in doc.values() for k in _keys_named(v)]
    if isinstance(doc, list):
        return [k for v in doc for k in _keys_named(v)]
    return []


@pytest.mark.parametrize(("layout", "name"), [(Layout.FLAT, "direct"), (Layout.LVM, "lvm")])
def test_autoinstall_seed_on_a_cidata_iso(tmp_path: Path, layout: Layout, name: str) -> None:
    answers = ubuntu_installer.render_user_data(layout=layout)
    path = installer.write_answers_seed(
        tmp_path / "seed.iso", ubuntu_installer.KIND, answers, instance_id="i-1",
        hostname="imagebuilder",
    )  # fmt: skip
    with iso.open_iso(path) as opened:
        assert opened.pvd.volume_identifier.decode().strip() == "cidata"
    text = iso.extract(path, "user-data", tmp_path / "user-data").read_text()
    meta = yaml.safe_load(iso.extract(path, "meta-data", tmp_path / "meta-data").read_text())
    assert meta["instance-id"] == "i-1"
    assert text.startswith("#cloud-config\n")
    ai = yaml.safe_load(text)["autoinstall"]
    assert ai["version"] == 1
    assert ai["storage"]["layout"]["name"] == name
    assert ai["storage"]["swap"] == {"size": 0}
    assert ai["ssh"] == {"install-server": True, "allow-pw": False}
    assert ai["shutdown"] == "poweroff"
    assert ai["interactive-sections"] == []
    assert ai["proxy"] is None
    # No account to log in with: no identity, no users, no keys; root locked.
    assert "identity" not in ai
    assert "users" not in ai["user-data"] and "ssh_authorized_keys" not in text
    assert ai["user-data"]["disable_root"] is True
    assert ai["user-data"]["ssh_pwauth"] is False
    names = _keys_named(ai)
    assert not [k for k in names if "passw" in k and k != "ssh_pwauth"]
    assert "$6$" not in text and "$y$" not in text  # no password hash either
    # The installer's cloud-init config is removed, so first boot reads imagebuilder's seed.
    late = " ".join(ai["late-commands"])
    assert "/target/etc/cloud/cloud.cfg.d/99-installer.cfg" in late
    assert "cloud-init clean" in late


def test_proxy_goes_to_the_installer_and_cloudimg_is_refused() -> None:
    text = ubuntu_installer.render_user_data(layout=Layout.LVM, proxy="http://10.0.2.2:3128")
    assert yaml.safe_load(text)["autoinstall"]["proxy"] == "http://10.0.2.2:3128"
    with pytest.raises(ConfigError, match="not an installer build"):
        ubuntu_installer.render_user_data(layout=Layout.CLOUDIMG)


def test_installer_failure_lines_are_found_after_the_offset(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(b"booting\n\x1b[31mAn error occurred. Press enter to start a shell\x1b[0m\n")
    line, end = installer._fatal_line(log, 0, ubuntu_installer.KIND.fatal)
    assert line == "An error occurred. Press enter to start a shell"
    assert end == log.stat().st_size
    log.write_bytes(log.read_bytes() + b"x" * 1000 + b"\nstill fine\n")
    assert installer._fatal_line(log, log.stat().st_size, ubuntu_installer.KIND.fatal)[0] is None


# ---- /curtin of installer images ------------------------------------------------------------


def test_custom_packages_archive_is_reproducible_and_holds_only_debs(tmp_path: Path) -> None:
    pkgs = tmp_path / "packages"
    pkgs.mkdir()
    (pkgs / "zz_1_all.deb").write_bytes(b"z" * 1000)
    (pkgs / "aa_1_amd64.deb").write_bytes(b"a" * 10)
    (pkgs / "notes.txt").write_text("not a package")
    first = curtin.custom_packages_archive(pkgs)
    os.utime(pkgs / "zz_1_all.deb", (1, 1))
    assert curtin.custom_packages_archive(pkgs) == first
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["aa_1_amd64.deb", "zz_1_all.deb"]
        assert {(m.uid, m.gid, m.mtime, m.mode) for m in members} == {(0, 0, 0, 0o644)}
        extracted = tar.extractfile("zz_1_all.deb")
        assert extracted is not None and extracted.read() == b"z" * 1000
    with pytest.raises(ConfigError, match=r"no \.deb files"):
        curtin.custom_packages_archive(tmp_path)


def test_installer_hook_files(tmp_path: Path) -> None:
    files = {f.name: f for f in curtin.installer_hook_files()}
    assert set(files) == {"curtin-hooks", "install-custom-packages", "setup-bootloader"}
    assert all(f.mode == stat.S_IFREG | 0o750 for f in files.values())
    (tmp_path / "x_1_all.deb").write_bytes(b"x")
    with_debs = {f.name: f for f in curtin.installer_hook_files(tmp_path)}
    assert with_debs["custom-packages.tar.gz"].mode == stat.S_IFREG | 0o644
