"""Installer builds for real (issue 6): the Debian installer installs bookworm from the
Debian mirror under TCG, in both layouts, then the usual provisioning and export run.

- flat: ``custom-ubuntu.tar.gz`` (the root partition) with the installer curtin hooks
  and the ``--packages`` debs in /curtin, passes ``imagebuilder inspect``;
- lvm: ``custom-ubuntu-lvm.dd.gz`` (the whole disk) with /curtin on the root logical
  volume and its own fstab, passes ``imagebuilder inspect``, and, written onto a blank
  disk, boots under OVMF to a login configured by cloud-init from a NoCloud seed.

Each install takes many minutes under TCG (the installer unpacks every package in an
emulated CPU), hence ``slow``: ``make test-slow`` runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.fakes.debmirror import build_deb
from tests.vmboot import boot_to_login, write_dd

pytestmark = [pytest.mark.slow, pytest.mark.vm, pytest.mark.root, pytest.mark.debian_installer]

CUSTOMIZE = "#!/bin/sh\nset -e\necho installed-by-imagebuilder > /etc/imagebuilder-installer\n"


def build(tmp_path: Path, layout: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "customize.sh"
    script.write_text(CUSTOMIZE)
    script.chmod(0o755)
    argv = [
        sys.executable, "-m", "imagebuilder", "bookworm", "--layout", layout,
        "--cache-dir", os.environ["IMAGEBUILDER_TEST_CACHE"], "--customize", str(script),
        "-o", str(out), "--work-dir", str(tmp_path / "work"), *extra,
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=4 * 3600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    for stage in ("install", "vm", "export"):
        assert f"==> {stage}" in proc.stderr
    assert list((tmp_path / "work").iterdir()) == []  # nothing of the build is left
    return proc


def inspect(out: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "imagebuilder", "inspect", str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_debian_installer_flat(tmp_path: Path) -> None:
    debs = tmp_path / "debs"
    debs.mkdir()
    deb = build_deb(tmp_path, "imagebuilder-hello", "1.0", {"usr/share/doc/ib-hello/x": b"x\n"})
    (debs / "imagebuilder-hello_1.0_all.deb").write_bytes(deb)
    out = tmp_path / "custom-ubuntu.tar.gz"
    build(tmp_path, "flat", out, "--packages", str(debs))
    inspect(out)
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        hook = tar.getmember("./curtin/curtin-hooks")
        assert hook.mode & 0o777 == 0o750
        for name in ("setup-bootloader", "install-custom-packages", "custom-packages.tar.gz"):
            assert f"./curtin/{name}" in names
        custom = tar.extractfile("./etc/imagebuilder-installer")
        assert custom is not None and custom.read() == b"installed-by-imagebuilder\n"
        assert tar.getmember("./etc/machine-id").size == 0
    assert "./etc/fstab" not in names  # curtin writes the deployed machine's own
    assert not any(n.startswith("./etc/ssh/ssh_host_") for n in names)
    assert not any("imagebuilder-build" in n for n in names)
    assert not any(n.startswith("./boot/efi/") and n != "./boot/efi/" for n in names)


def test_debian_installer_lvm_boots_from_a_blank_disk(tmp_path: Path) -> None:
    out = tmp_path / "custom-ubuntu-lvm.dd.gz"
    build(tmp_path, "lvm", out)
    report = inspect(out)
    assert "fstab" in report
    # Onto a blank (bigger) disk, as curtin writes it, then booted through OVMF.
    raw = write_dd(out, tmp_path / "blank.raw", disk_size=16 << 30)
    console = boot_to_login(raw, arch="amd64", firmware="uefi", workdir=tmp_path / "boot")
    assert "login:" in console
