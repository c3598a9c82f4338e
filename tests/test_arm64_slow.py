"""arm64 on an x86 host: a bookworm image built end to end under emulation.

The build test (``slow``, ``vm``, ``root``) runs what a user runs,
``imagebuilder bookworm --arch arm64 --base bootstrap``: mmdebstrap through
qemu-user binfmt emulation, then the build VM on ``qemu-system-aarch64 -M virt
-cpu max`` with AAVMF under TCG, then the export, and ``imagebuilder inspect``
must pass the result. The bootstrap base lands in ``$IMAGEBUILDER_TEST_CACHE``
and is reused by later runs (a cold run bootstraps it first). It also checks the
base disk itself: no BIOS boot partition, the removable-path ``BOOTAA64.EFI`` on
the ESP. The small tests at the top are fast and run in the default suite: the
arm64 layout, the binfmt check and the arm64 build VM's command line.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from imagebuilder.base import bootloader, bootstrap, disklayout, hostcheck
from imagebuilder.base.bootstrap import cached_base
from imagebuilder.base.hostcheck import emulation_problem
from imagebuilder.base.recipe import recipe
from imagebuilder.config.tree import Firmware, resolve
from imagebuilder.vm import qemu_cmdline, uefi

ARM64_ELF = "7f454c460201010000000000000000000200b700"
MASK = "ffffffffffffff00fffffffffffffffffeffffff"


# ---- fast: layout, binfmt check, VM command line ---------------------------------------


def test_arm64_layout_has_no_bios_boot_partition(tmp_path: Path) -> None:
    layout = disklayout.cloudimg_layout("seed", 3 * disklayout.GIB, arch="arm64")
    assert [p.number for p in layout.partitions] == [1, 15]
    assert layout.partition(15).type == disklayout.ESP_TYPE
    assert layout.partition(15).start == 2048
    esp_end = layout.partition(15).start + (layout.partition(15).size or 0)
    assert esp_end <= layout.partition(1).start
    raw = tmp_path / "disk.raw"
    disklayout.create_raw(raw, layout)  # the real sfdisk accepts it
    out = subprocess.run(["sfdisk", "--json", raw], capture_output=True, check=True, text=True)
    parts = json.loads(out.stdout)["partitiontable"]["partitions"]
    assert sorted(p["node"][-2:].lstrip("w") for p in parts) == ["1", "15"]
    # amd64 keeps the BIOS boot partition, unchanged.
    amd = disklayout.cloudimg_layout("seed", 3 * disklayout.GIB)
    assert [p.number for p in amd.partitions] == [1, 14, 15]


def _binfmt(tmp_path: Path, entries: dict[str, str], status: str = "enabled") -> Path:
    d = tmp_path / "binfmt_misc"
    d.mkdir(parents=True)
    (d / "status").write_text(status + "\n")
    (d / "register").write_text("")
    for name, text in entries.items():
        (d / name).write_text(text)
    return d


def _entry(state: str = "enabled", flags: str = "PF", magic: str = ARM64_ELF) -> str:
    return (
        f"{state}\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: {flags}\n"
        f"offset 0\nmagic {magic}\nmask {MASK}\n"
    )


@pytest.mark.skipif(platform.machine() != "x86_64", reason="checks emulation on an x86 host")
def test_binfmt_check_names_what_is_missing(tmp_path: Path) -> None:
    assert emulation_problem("amd64", tmp_path / "nowhere") is None  # native: nothing needed
    assert "not mounted" in str(emulation_problem("arm64", tmp_path / "nowhere"))
    ok = _binfmt(tmp_path / "ok", {"qemu-aarch64": _entry()})
    assert emulation_problem("arm64", ok) is None
    off = _binfmt(tmp_path / "off", {"qemu-aarch64": _entry("disabled")})
    assert "disabled" in str(emulation_problem("arm64", off))
    nof = _binfmt(tmp_path / "nof", {"qemu-aarch64": _entry(flags="P")})
    assert "F (fix-binary)" in str(emulation_problem("arm64", nof))
    riscv = ARM64_ELF[:36] + "f300"
    other = _binfmt(tmp_path / "other", {"qemu-riscv64": _entry(magic=riscv)})
    assert "no binfmt_misc entry runs aarch64" in str(emulation_problem("arm64", other))
    assert "disabled" in str(emulation_problem("arm64", _binfmt(tmp_path / "x", {}, "disabled")))


@pytest.mark.skipif(platform.machine() != "x86_64", reason="checks emulation on an x86 host")
def test_bootstrap_without_binfmt_fails_in_one_line_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hostcheck, "BINFMT_DIR", tmp_path / "nowhere")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(hostcheck, "missing_tools", lambda extra=None: {})
    cfg = resolve(
        {"series": "bookworm", "base": "bootstrap", "arch": "arm64", "cache_dir": str(tmp_path)},
        environ={},
    )
    from imagebuilder.errors import BootstrapError
    from imagebuilder.progress import Progress

    with pytest.raises(BootstrapError) as info:
        bootstrap.bootstrap_base(cfg, Progress())
    assert "\n" not in info.value.message and "qemu-user" in info.value.message
    assert info.value.hint is not None
    assert "setup-host.sh" in info.value.hint and "qemu-aarch64" in info.value.hint
    assert not list(tmp_path.glob("bootstrap/.tmp-*"))  # failed before building anything


def test_arm64_build_vm_is_virt_with_aavmf_under_tcg(tmp_path: Path) -> None:
    spec = qemu_cmdline.MachineSpec(
        arch="arm64", accel="tcg", disk=tmp_path / "d.qcow2", serial_log=tmp_path / "s.log",
        qmp_socket=tmp_path / "q.sock", ssh_port=2222, firmware=Firmware.UEFI,
        firmware_code=tmp_path / "code.fd", firmware_vars=tmp_path / "vars.fd",
    )  # fmt: skip
    argv = qemu_cmdline.qemu_argv(spec)
    assert argv[0] == "qemu-system-aarch64"
    assert argv[argv.index("-machine") + 1].startswith("virt")
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-cpu") + 1].split(",")[0] == "max"
    assert uefi.UEFI_FIRMWARE["arm64"][0].name == "AAVMF_CODE.fd"


# ---- slow: the whole arm64 build --------------------------------------------------------


def _esp_files(base_qcow2: Path, work: Path) -> tuple[list[int], list[str]]:
    """(partition numbers, files on partition 15) of a qcow2 disk, without mounting it."""
    raw = work / "base.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", base_qcow2, raw], check=True)
    try:
        table = json.loads(
            subprocess.run(["sfdisk", "--json", raw], capture_output=True, check=True).stdout
        )["partitiontable"]
        numbers, esp_start = [], None
        for p in table["partitions"]:
            number = int(p["node"].removeprefix(str(raw)))
            numbers.append(number)
            if number == 15:
                esp_start = int(p["start"]) * 512
        assert esp_start is not None, "no partition 15"
        out = subprocess.run(
            ["mdir", "-/", "-b", "-i", f"{raw}@@{esp_start}", "::/"],
            capture_output=True,
            check=True,
            text=True,
            env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
        ).stdout
        return sorted(numbers), [ln.strip().removeprefix("::/") for ln in out.splitlines()]
    finally:
        raw.unlink()


@pytest.mark.slow
@pytest.mark.vm
@pytest.mark.root
def test_arm64_bookworm_builds_under_tcg_and_passes_inspect(tmp_path: Path) -> None:
    if emulation_problem("arm64"):
        pytest.fail(f"arm64 emulation: {emulation_problem('arm64')} (run scripts/setup-host.sh)")
    cache = Path(os.environ["IMAGEBUILDER_TEST_CACHE"])
    out = tmp_path / "bookworm-arm64.tar.gz"
    argv = [
        sys.executable, "-m", "imagebuilder", "bookworm", "--arch", "arm64",
        "--base", "bootstrap", "--cache-dir", str(cache), "-o", str(out),
        "--work-dir", str(tmp_path / "work"),
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=4 * 3600)
    seconds = time.monotonic() - start
    print(f"arm64 build: {seconds:.0f} s")
    print("\n".join(ln for ln in proc.stderr.splitlines() if ln.startswith("==>"))[-3000:])
    assert proc.returncode == 0, proc.stderr[-6000:]

    inspect = subprocess.run(
        [sys.executable, "-m", "imagebuilder", "inspect", str(out)], capture_output=True, text=True
    )
    assert inspect.returncode == 0, inspect.stdout + inspect.stderr
    assert "OK: deployable by MAAS" in inspect.stdout

    manifest = json.loads(Path(f"{out}.manifest.json").read_text())
    text = json.dumps(manifest)
    assert '"architecture": "arm64/generic"' in text
    assert "architecture=arm64/generic" in text  # the suggested upload command
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        pin = tar.extractfile("./curtin/CUSTOM_KERNEL")
        assert pin is not None and pin.read().decode().strip() == "linux-image-arm64"
        arch = tar.extractfile("./var/lib/dpkg/status")
        assert arch is not None and b"Package: dpkg\n" in arch.read()
    assert any(n.startswith("./boot/vmlinuz-") and n.endswith("-arm64") for n in names), names
    assert "./usr/lib/grub/arm64-efi/modinfo.sh" in names

    cfg = resolve(
        {"series": "bookworm", "base": "bootstrap", "arch": "arm64", "cache_dir": str(cache)},
        environ={},
    )
    base = cached_base(cache, recipe(cfg))
    assert base is not None and base.kernel == "linux-image-arm64"
    numbers, esp = _esp_files(base.path, tmp_path)
    assert numbers == [1, 15]  # no BIOS boot partition on arm64
    assert bootloader.removable_loader("arm64") in esp  # EFI/BOOT/BOOTAA64.EFI
    meta = json.loads((base.path.parent / "meta.json").read_text())
    print(f"arm64 bootstrap base: {meta.get('seconds')}")
