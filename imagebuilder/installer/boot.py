"""Installer builds: boot an OS installer with no keystrokes and wait for it to finish.

The family's installer kind (:class:`imagebuilder.families.seam.InstallerKind`) says
which files of its ISO are the kernel and initrd, its command line, its answer file
and the console lines that mean failure. This module reads the kernel and initrd
out of the ISO (:mod:`imagebuilder.installer.iso`), writes the answers onto a cidata
seed where the installer reads them from one, and boots the machine with
``-kernel/-initrd/-append``, the ISO as a CD-ROM; :func:`run_installer` runs it
until the installer powers it off. The installer machine is a
:class:`qemu_cmdline.MachineSpec` with extra arguments, so ``qemu`` needs no change.
This module does not download (``sources`` does), does not provision over SSH
(``provision`` does, on the installed disk) and does not export.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..families.seam import TERMINAL_CODES, InstallerKind
from ..vm import qemu, qemu_cmdline, seed
from . import iso

__all__ = [
    "BootFiles",
    "InstallerBoot",
    "extract_boot_files",
    "installer_args",
    "installer_spec",
    "run_installer",
    "write_answers_seed",
]

#: Seconds for a whole installation, per accelerator.
INSTALL_TIMEOUT = {"kvm": 3600.0, "tcg": 4 * 3600.0}
#: Serial console lines that mean any installer failed (beyond qemu.FATAL_BOOT and the
#: installer kind's own).
INSTALLER_FATAL = ("Kernel panic - not syncing", "Dropping to a shell!")


# ---- what the VM boots ------------------------------------------------------------------


@dataclass(frozen=True)
class BootFiles:
    kernel: Path
    initrd: Path


@dataclass(frozen=True)
class InstallerBoot:
    """An installer boot: kernel, initrd, command line, the ISO (None for netboot)."""

    kernel: Path
    initrd: Path
    cmdline: str
    cdrom: Path | None = None


def extract_boot_files(source: Path, dest_dir: Path, arch: str, kind: InstallerKind) -> BootFiles:
    """Stream the installer kernel and initrd out of ISO ``source`` into ``dest_dir``."""
    try:
        kernel_member, initrd_member = kind.iso_members[arch]
    except KeyError:
        raise ConfigError(f"no {kind.name} installer ISO layout known for {arch}") from None
    kernel, initrd = dest_dir / f"installer-{arch}-vmlinuz", dest_dir / f"installer-{arch}-initrd"
    iso.extract_many(source, {kernel_member: kernel, initrd_member: initrd})
    return BootFiles(kernel=kernel, initrd=initrd)


def _opt(path: Path) -> str:
    """A path inside a -drive option: commas are doubled."""
    return str(path).replace(",", ",,")


def _cdrom_args(arch: str, path: Path) -> list[str]:
    drive = f"if=none,id=cd0,media=cdrom,readonly=on,format=raw,file={_opt(path)}"
    if arch == "amd64":  # q35's built-in AHCI: every installer initrd has a driver for it
        return ["-drive", drive, "-device", "ide-cd,drive=cd0"]
    return [
        "-drive", drive,
        "-device", "virtio-scsi-pci,id=scsi0",
        "-device", "scsi-cd,bus=scsi0.0,drive=cd0",
    ]  # fmt: skip


def installer_args(arch: str, boot: InstallerBoot) -> list[str]:
    """Extra qemu arguments: direct kernel boot, the ISO as CD-ROM, no reboot into it again."""
    argv = [
        "-kernel", str(boot.kernel),
        "-initrd", str(boot.initrd),
        "-append", boot.cmdline,
        "-no-reboot",  # the installer's final reboot ends qemu instead of installing again
    ]  # fmt: skip
    if boot.cdrom is not None:
        argv += _cdrom_args(arch, boot.cdrom)
    return argv


def installer_spec(
    spec: qemu_cmdline.MachineSpec, boot: InstallerBoot, *, min_memory: int = 0
) -> qemu_cmdline.MachineSpec:
    """``spec`` (the build VM: disk, seed, firmware, forwards) turned into the installer VM."""
    memory = max(spec.memory, min_memory)
    return dataclasses.replace(
        spec,
        memory=memory,
        extra=(*spec.extra, *installer_args(spec.arch, boot)),
        name=f"{spec.name}-installer",
    )


# ---- the answers --------------------------------------------------------------------------


def write_answers_seed(
    path: Path, kind: InstallerKind, answers: str, *, instance_id: str, hostname: str
) -> Path:
    """The cidata ISO an installer reads its answers from (atomic)."""
    meta = seed.render_meta_data(instance_id=instance_id, hostname=hostname)
    return seed.write_iso(path, {kind.answer_file: answers.encode(), "meta-data": meta.encode()})


# ---- running it ---------------------------------------------------------------------------


def _tail(log: Path, size: int = 4096) -> str:
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, log.stat().st_size - size))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _fatal_line(log: Path, offset: int, fatal: Sequence[str]) -> tuple[str | None, int]:
    """The first line of ``fatal`` in ``log`` after ``offset``; the new offset."""
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, offset - 256))
            data = fh.read()
    except OSError:
        return None, offset
    end = max(0, offset - 256) + len(data)
    for line in data.decode("utf-8", "replace").splitlines():
        if any(p in line for p in fatal):
            return TERMINAL_CODES.sub("", line).strip(), end
    return None, end


def run_installer(
    spec: qemu_cmdline.MachineSpec,
    *,
    stderr_log: Path,
    timeout: float,
    kind: InstallerKind,
    console: Callable[[str], None] | None = None,
    poll: float = 5.0,
) -> float:
    """Run the installer VM ``spec`` until it powers off; returns seconds taken.

    MachineError on a failed install (console pattern, non-zero qemu exit) or timeout;
    qemu is always gone when this returns.
    """
    start = time.monotonic()
    offset = 0
    fatal_lines = (*INSTALLER_FATAL, *kind.fatal)
    machine = qemu.Machine(spec, stderr_log=stderr_log, console=console)
    with machine:
        assert machine.proc is not None
        while not machine.wait_exit(poll):
            fatal, offset = _fatal_line(spec.serial_log, offset, fatal_lines)
            if fatal:
                raise machine.error(
                    f"the installer failed: {fatal}", "see the installer's serial console log"
                )
            question = kind.pending_question(_tail(spec.serial_log))
            if question:
                raise machine.error(
                    f"the installer stopped to ask '{question}', which no answer covers",
                    "see the installer's serial console log; a download failure means the "
                    "mirror lacks installer files: pass a complete mirror with --mirror URL",
                )
            if time.monotonic() - start > timeout:
                raise machine.error(
                    f"the installer did not finish within {timeout:.0f} s",
                    "raise --timeout, or watch it with --vnc / --console",
                )
        status = machine.proc.returncode
        fatal, offset = _fatal_line(spec.serial_log, offset, fatal_lines)
        if status != 0 or fatal:
            raise machine.error(f"the installer failed: {fatal or f'qemu exit status {status}'}")
    with contextlib.suppress(OSError):
        spec.qmp_socket.unlink()
    return time.monotonic() - start
