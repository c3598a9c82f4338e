"""The installer machinery with a real kernel in qemu (TCG), no OS installer needed.

A live-server-like ISO is built here whose ``casper/vmlinuz`` is Debian's real
installer kernel (from the mirror, through :mod:`imagebuilder.installer.netboot`) and whose
``casper/initrd`` is a busybox ``/init`` that reports what the machine looks like
and powers off, as an installer does when it is done. :func:`install.install_disk`
then runs the whole Ubuntu installer path: the ISO verified as ``--iso``, kernel and
initrd read out of it, the autoinstall seed, qemu with ``-kernel/-initrd/-append``,
the end detected at poweroff, nothing left behind; and a failing "installer" is
stopped as soon as its console says so, not at the timeout.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from imagebuilder.config.tree import Config, resolve
from imagebuilder.errors import MachineError
from imagebuilder.installer import build, netboot
from imagebuilder.progress import Progress
from tests.fakes.initrd import busybox_initrd
from tests.fakes.isoimage import make_iso

pytestmark = [pytest.mark.vm]

REPORT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "IBTEST cmdline: $(cat /proc/cmdline)"
for d in /sys/bus/pci/devices/*; do
    echo "IBTEST pci $(cat $d/vendor):$(cat $d/device)"
done
echo "IBTEST memory $(grep MemTotal /proc/meminfo)"
echo "IBTEST done"
poweroff -f
"""
FAILING = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
echo "An error occurred. Press enter to start a shell"
sleep 3600
"""


def kernel(progress: Progress) -> bytes:
    cfg = resolve(
        {
            "series": "bookworm",
            "layout": "flat",
            "cache_dir": os.environ["IMAGEBUILDER_TEST_CACHE"],
        },
        environ={},
    )
    return netboot.netboot_files(cfg, progress).kernel.read_bytes()


def config(tmp_path: Path, init: str, progress: Progress) -> Config:
    iso = make_iso(
        tmp_path / "ubuntu-22.04.4-live-server-amd64.iso",
        {"casper/vmlinuz": kernel(progress), "casper/initrd": busybox_initrd(init)},
    )
    return resolve(
        {
            "series": "jammy",
            "layout": "flat",
            "iso": str(iso),
            "accel": "tcg",
            "cache_dir": str(tmp_path / "cache"),
            "disk_size": "1G",
            "timeout": "900",
        },
        environ={},
    )


def qemu_running(build_dir: Path) -> bool:
    ps = subprocess.run(["pgrep", "-f", str(build_dir)], capture_output=True, text=True)
    return bool(ps.stdout.strip())


def test_the_installer_vm_boots_the_iso_kernel_and_ends_at_poweroff(
    tmp_path: Path, progress: Progress
) -> None:
    cfg = config(tmp_path, REPORT, progress)
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    base = build.install_disk(cfg, build_dir, progress)
    console = (build_dir / "install-serial.log").read_text(errors="replace")
    assert "IBTEST done" in console
    cmdline = next(ln for ln in console.splitlines() if "IBTEST cmdline:" in ln)
    assert "autoinstall ds=nocloud console=ttyS0,115200n8" in cmdline
    pci = [ln.split()[-1] for ln in console.splitlines() if "IBTEST pci" in ln]
    # the blank build disk and the autoinstall seed are virtio disks; AHCI holds the ISO
    assert pci.count("0x1af4:0x1001") + pci.count("0x1af4:0x1042") == 2
    assert "0x8086:0x2922" in pci
    assert "MemTotal" in console
    assert base.kind == "installer" and base.path == build_dir / "disk.qcow2"
    assert base.origin.startswith("installer: ") and len(base.sha256) == 64
    # the installer's files are gone; only the disk and the logs stay for provisioning
    assert sorted(p.name for p in build_dir.iterdir()) == [
        "disk.qcow2",
        "install-qemu.log",
        "install-serial.log",
        "install.log",
    ]
    assert "-no-reboot" in (build_dir / "install.log").read_text()
    assert not qemu_running(build_dir)


def test_a_failing_installer_is_stopped_at_once(tmp_path: Path, progress: Progress) -> None:
    cfg = config(tmp_path, FAILING, progress)
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    start = time.monotonic()
    with pytest.raises(MachineError, match="the installer failed: An error occurred"):
        build.install_disk(cfg, build_dir, progress)
    assert time.monotonic() - start < 300  # the timeout is 900 s
    assert not qemu_running(build_dir)
