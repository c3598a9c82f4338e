"""The amd64 firmware matrix: one dd.gz boots under SeaBIOS and under OVMF.

MAAS deploys a dd image onto machines of either firmware, so the disk must carry
both boot paths: grub i386-pc in the BIOS boot partition and the removable-path
``EFI/BOOT/BOOTX64.EFI`` on the ESP (a freshly written disk has no UEFI boot
entry). The default-suite test exports the cached bootstrap bookworm base (the
one the provisioning tests use; built once into ``$IMAGEBUILDER_TEST_CACHE``)
with ``imagebuilder export --filetype ddgz``, writes it onto a blank disk larger
than the image, as curtin does, and boots that disk under each firmware to a
login configured by cloud-init from a fresh NoCloud seed (see tests/vmboot.py).
The ``slow`` test does the same with the dd.gz of a whole build (build VM,
provisioning, hygiene), the way a user makes one (expected to fail until the
build keeps /etc/fstab in dd outputs). ``write_dd`` itself has a fast test.
"""

from __future__ import annotations

import gzip
import lzma
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import pytest

from imagebuilder.base import disklayout
from imagebuilder.base.bootstrap import bootstrap_base
from imagebuilder.config.tree import resolve
from imagebuilder.progress import Progress
from imagebuilder.sources.basedisk import BaseDisk
from tests.vmboot import boot_to_login, write_dd

FIRMWARES: tuple[Literal["bios", "uefi"], ...] = ("bios", "uefi")
#: The blank disk the image is written to is this much larger than the image.
SPARE = 1 << 30


@pytest.fixture(scope="module")
def base() -> BaseDisk:
    cache = Path(os.environ["IMAGEBUILDER_TEST_CACHE"])
    cfg = resolve({"series": "bookworm", "base": "bootstrap", "cache_dir": str(cache)}, environ={})
    return bootstrap_base(cfg, Progress())


def _cli(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "imagebuilder", *(os.fspath(a) for a in args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=3600)


def _blank_disk_with(ddgz: Path, work: Path) -> Path:
    """The dd.gz written onto a blank disk 1 GiB larger than the image."""
    with gzip.open(ddgz) as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
    return write_dd(ddgz, work / "machine-disk.raw", disk_size=size + SPARE)


def _esp_and_bios_boot(disk: Path) -> list[str]:
    """Boot paths the disk carries, read from its GPT and ESP without mounting."""
    import json

    out = subprocess.run(["sfdisk", "--json", disk], capture_output=True, check=True, text=True)
    parts = {
        int(p["node"].removeprefix(str(disk))): p
        for p in json.loads(out.stdout)["partitiontable"]["partitions"]
    }
    found = []
    if parts.get(14, {}).get("type") == disklayout.BIOS_BOOT_TYPE:
        found.append("bios-boot-partition")
    esp = parts.get(15)
    if esp is not None and esp["type"] == disklayout.ESP_TYPE:
        listing = subprocess.run(
            ["mdir", "-/", "-b", "-i", f"{disk}@@{int(esp['start']) * 512}", "::/"],
            capture_output=True, check=True, text=True,
            env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
        ).stdout  # fmt: skip
        found += [ln.strip().removeprefix("::/") for ln in listing.splitlines()]
    return found


def _boots_under_both(disk: Path, work: Path) -> dict[str, float]:
    stamp = disk.stat().st_mtime_ns
    seconds: dict[str, float] = {}
    for firmware in FIRMWARES:
        start = time.monotonic()
        console = boot_to_login(
            disk, arch="amd64", firmware=firmware, workdir=work / firmware, timeout=600
        )
        seconds[firmware] = round(time.monotonic() - start, 1)
        assert f"fw={firmware}" in console  # the guest itself saw this firmware
        assert "Failed to start" not in console, console[-3000:]
    assert disk.stat().st_mtime_ns == stamp  # booted through overlays only
    print(f"boot to a cloud-init-configured login (TCG): {seconds}")
    return seconds


@pytest.fixture(scope="module")
def exported(base: BaseDisk, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the dd.gz ``imagebuilder export`` makes of the base, a blank disk holding it)."""
    work = tmp_path_factory.mktemp("firmware")
    out = work / "bookworm.dd.gz"
    start = time.monotonic()
    proc = _cli("export", base.path, "--series", "bookworm", "--filetype", "ddgz", "-o", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    disk = _blank_disk_with(out, work)
    print(f"export + write onto the blank disk: {time.monotonic() - start:.1f} s")
    return out, disk


@pytest.mark.vm  # qemu-img, qemu-storage-daemon
@pytest.mark.root
def test_exported_dd_gz_carries_both_boot_paths_and_passes_inspect(
    exported: tuple[Path, Path],
) -> None:
    ddgz, disk = exported
    proc = _cli("inspect", ddgz)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ddgz" in proc.stdout
    found = _esp_and_bios_boot(disk)
    assert "bios-boot-partition" in found
    assert "EFI/BOOT/BOOTX64.EFI" in found and "EFI/BOOT/grub.cfg" in found


@pytest.mark.vm
@pytest.mark.root
def test_exported_dd_gz_boots_under_seabios_and_ovmf(
    exported: tuple[Path, Path], tmp_path: Path
) -> None:
    _boots_under_both(exported[1], tmp_path)


@pytest.mark.slow
@pytest.mark.vm
@pytest.mark.root
def test_built_dd_gz_boots_under_seabios_and_ovmf(base: BaseDisk, tmp_path: Path) -> None:
    out = tmp_path / "bookworm.dd.gz"
    cache = os.environ["IMAGEBUILDER_TEST_CACHE"]
    proc = _cli("bookworm", "--base", "bootstrap", "--cache-dir", cache, "--filetype", "ddgz",
                "-o", out, "--work-dir", tmp_path / "work")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    inspect = _cli("inspect", out)
    assert inspect.returncode == 0, inspect.stdout + inspect.stderr
    _boots_under_both(_blank_disk_with(out, tmp_path), tmp_path)


def test_write_dd_is_sparse_sized_and_reads_every_compression(tmp_path: Path) -> None:
    data = bytearray(3 << 20)  # 3 MiB: data, a zero MiB, data
    data[:5] = b"first"
    data[(2 << 20) + 7 : (2 << 20) + 11] = b"last"
    gz, xz = tmp_path / "d.dd.gz", tmp_path / "d.dd.xz"
    gz.write_bytes(gzip.compress(bytes(data)))
    xz.write_bytes(lzma.compress(bytes(data)))
    for image in (gz, xz):
        disk = write_dd(image, tmp_path / f"{image.name}.raw", disk_size=5 << 20)
        assert disk.stat().st_size == 5 << 20
        assert disk.read_bytes()[: 3 << 20] == bytes(data)
        assert disk.stat().st_blocks * 512 <= 2 << 20  # the zero MiB and the tail are holes
