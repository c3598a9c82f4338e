"""Installer builds: boot an OS installer with no keystrokes and wait for it to finish.

Where the live-server ISO is (its name found in ``SHA256SUMS`` by ``live-server``;
amd64 on releases.ubuntu.com, arm64 in cdimage's layout), the kernel and initrd
read out of the ISO (:mod:`imagebuilder.installer.iso`), the kernel command line
(``autoinstall ds=nocloud``), the autoinstall seed rendered from
``seeds/autoinstall-user-data.yaml.in`` (layout ``direct`` or ``lvm``, ssh server,
no swap, the per-build key and no password) and the qemu arguments that boot
them with ``-kernel/-initrd/-append``, the ISO as a CD-ROM. :func:`run_installer`
runs that machine until the installer powers it off. The installer machine is a
:class:`qemu.MachineSpec` with extra arguments, so ``qemu`` needs no change.
This module does not download (``sources`` does), does not provision over SSH
(``provision`` does, on the installed disk) and does not export.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config.choices import Layout
from ..errors import ConfigError, SourceError
from ..families.seam import Release
from ..vm import qemu, seed
from . import iso

__all__ = [
    "BootFiles",
    "InstallerBoot",
    "IsoEntry",
    "autoinstall_layout",
    "extract_boot_files",
    "find_live_server_iso",
    "installer_args",
    "installer_spec",
    "kernel_cmdline",
    "live_server_dir_url",
    "pending_question",
    "render_autoinstall",
    "run_installer",
    "write_autoinstall_seed",
]

RELEASES_MIRROR = "https://releases.ubuntu.com"
CDIMAGE_MIRROR = "https://cdimage.ubuntu.com"
#: Kernel and initrd inside an installer ISO, by kind.
BOOT_MEMBERS: dict[str, dict[str, tuple[str, str]]] = {
    "ubuntu": {
        "amd64": ("casper/vmlinuz", "casper/initrd"),
        "arm64": ("casper/vmlinuz", "casper/initrd"),
    },
    "debian": {
        "amd64": ("install.amd/vmlinuz", "install.amd/initrd.gz"),
        "arm64": ("install.a64/vmlinuz", "install.a64/initrd.gz"),
    },
}
SERIAL_CONSOLE = {"amd64": "ttyS0,115200n8", "arm64": "ttyAMA0,115200n8"}
#: subiquity keeps the live system in RAM: less than this fails in odd ways.
MIN_MEMORY = 4096  # MiB
#: Seconds for a whole installation, per accelerator.
INSTALL_TIMEOUT = {"kvm": 3600.0, "tcg": 4 * 3600.0}
#: Serial console lines that mean the installation failed (beyond qemu.FATAL_BOOT).
INSTALLER_FATAL = (
    "An error occurred. Press enter to start a shell",  # subiquity crash
    "autoinstall config did not pass validation",
    "Malformed autoinstall",
    "Installation step failed",  # debian-installer
    "Unable to install GRUB",
    "Kernel panic - not syncing",
    "Dropping to a shell!",
)
AUTOINSTALL_TEMPLATE = "autoinstall-user-data.yaml.in"
#: The hooks shipped in /curtin of installer-built images, and the debs archive name.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|[\x00-\x08\x0b-\x1f\x7f]")


# ---- where the ISO is -------------------------------------------------------------------


@dataclass(frozen=True)
class IsoEntry:
    name: str
    sha256: str


def live_server_dir_url(release: Release, arch: str, mirror: str | None = None) -> str:
    """Directory holding the live-server ISO and its SHA256SUMS (+ .gpg)."""
    if release.distro != "ubuntu":
        raise ConfigError(
            f"{release.codename} has no Ubuntu live-server ISO",
            hint="Debian installer builds use the netboot installer or --iso PATH",
        )
    if arch == "amd64":
        return f"{(mirror or RELEASES_MIRROR).rstrip('/')}/{release.codename}"
    return f"{(mirror or CDIMAGE_MIRROR).rstrip('/')}/releases/{release.codename}/release"


_SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(\S+)\s*$")


def _version_key(name: str) -> tuple[int, ...]:
    m = re.search(r"-(\d+(?:\.\d+)*)-", name)
    return tuple(int(p) for p in m.group(1).split(".")) if m else ()


def find_live_server_iso(sums: str, arch: str) -> IsoEntry:
    """The live-server ISO for ``arch`` listed in a SHA256SUMS text (newest point release)."""
    found: list[IsoEntry] = []
    for line in sums.splitlines():
        m = _SUMS_LINE.match(line.strip())
        if m and "live-server" in m.group(2) and m.group(2).endswith(f"-{arch}.iso"):
            found.append(IsoEntry(name=m.group(2), sha256=m.group(1).lower()))
    if not found:
        raise SourceError(
            f"SHA256SUMS lists no live-server ISO for {arch}",
            hint="check the mirror and series, or pass a local ISO with --iso PATH",
        )
    return max(found, key=lambda e: (_version_key(e.name), e.name))


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


def extract_boot_files(source: Path, dest_dir: Path, arch: str, kind: str = "ubuntu") -> BootFiles:
    """Stream the installer kernel and initrd out of ISO ``source`` into ``dest_dir``."""
    try:
        kernel_member, initrd_member = BOOT_MEMBERS[kind][arch]
    except KeyError:
        raise ConfigError(f"no {kind} installer ISO layout known for {arch}") from None
    kernel, initrd = dest_dir / f"installer-{arch}-vmlinuz", dest_dir / f"installer-{arch}-initrd"
    iso.extract_many(source, {kernel_member: kernel, initrd_member: initrd})
    return BootFiles(kernel=kernel, initrd=initrd)


def kernel_cmdline(arch: str, kind: str = "ubuntu", extra: Sequence[str] = ()) -> str:
    """The installer's command line: unattended, answers from the cidata seed, serial console."""
    console = f"console={SERIAL_CONSOLE[arch]}"
    if kind == "ubuntu":
        words = ["autoinstall", "ds=nocloud", console]
    else:
        words = ["auto=true", "priority=critical", "DEBIAN_FRONTEND=text", console]
    return " ".join([*words, *extra])


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
    spec: qemu.MachineSpec, boot: InstallerBoot, *, distro: str = "ubuntu"
) -> qemu.MachineSpec:
    """``spec`` (the build VM: disk, seed, firmware, forwards) turned into the installer VM."""
    memory = max(spec.memory, MIN_MEMORY) if distro == "ubuntu" else spec.memory
    return dataclasses.replace(
        spec,
        memory=memory,
        extra=(*spec.extra, *installer_args(spec.arch, boot)),
        name=f"{spec.name}-installer",
    )


# ---- the answers --------------------------------------------------------------------------


def autoinstall_layout(layout: Layout) -> str:
    """subiquity's storage layout name for an imagebuilder --layout."""
    names = {Layout.FLAT: "direct", Layout.LVM: "lvm"}
    if layout not in names:
        raise ConfigError(f"--layout {layout.value} is not an installer build")
    return names[layout]


def _yaml(value: str | None) -> str:
    return "null" if value is None else json.dumps(value)


def render_autoinstall(
    *,
    layout: Layout,
    hostname: str = "imagebuilder",
    proxy: str | None = None,
) -> str:
    """The autoinstall user-data: layout, ssh server, no swap, no account to log in with."""
    template = string.Template((seed.SEEDS_DIR / AUTOINSTALL_TEMPLATE).read_text())
    return template.substitute(
        layout=autoinstall_layout(layout), hostname=_yaml(hostname), proxy=_yaml(proxy)
    )


def write_autoinstall_seed(
    path: Path,
    *,
    layout: Layout,
    instance_id: str,
    hostname: str = "imagebuilder",
    proxy: str | None = None,
) -> Path:
    """The cidata ISO subiquity reads its autoinstall answers from (atomic)."""
    user_data = render_autoinstall(layout=layout, hostname=hostname, proxy=proxy)
    meta = seed.render_meta_data(instance_id=instance_id, hostname=hostname)
    return seed.write_iso(path, {"user-data": user_data.encode(), "meta-data": meta.encode()})


# ---- running it ---------------------------------------------------------------------------


#: The Debian installer's text frontend waiting for an answer nobody will type.
_PROMPT = "Prompt: '?' for help"
_UNDERLINE = re.compile(r"^-{4,}$")


def pending_question(text: str) -> str | None:
    """The title of the question an installer's text frontend waits on at the end of
    ``text`` (serial console output), or None when it is not waiting."""
    lines = [_ANSI.sub("", ln).strip() for ln in text.replace("\r", "\n").splitlines()]
    lines = [ln for ln in lines if ln]
    last = max((i for i, ln in enumerate(lines) if ln.startswith(_PROMPT)), default=None)
    if last is None:
        return None
    titles = [i for i in range(last) if _UNDERLINE.match(lines[i]) and i > 0]
    title = lines[titles[-1] - 1] if titles else "an unanswered question"
    asks = [ln for ln in lines[titles[-1] if titles else 0 : last] if ln.endswith(":")]
    return f"{title}: {asks[-1].rstrip(':')}" if asks else title


def _tail(log: Path, size: int = 4096) -> str:
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, log.stat().st_size - size))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _fatal_line(log: Path, offset: int) -> tuple[str | None, int]:
    """The first INSTALLER_FATAL line in ``log`` after ``offset``; the new offset."""
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, offset - 256))
            data = fh.read()
    except OSError:
        return None, offset
    end = max(0, offset - 256) + len(data)
    for line in data.decode("utf-8", "replace").splitlines():
        if any(p in line for p in INSTALLER_FATAL):
            return _ANSI.sub("", line).strip(), end
    return None, end


def run_installer(
    spec: qemu.MachineSpec,
    *,
    stderr_log: Path,
    timeout: float,
    console: Callable[[str], None] | None = None,
    poll: float = 5.0,
) -> float:
    """Run the installer VM ``spec`` until it powers off; returns seconds taken.

    MachineError on a failed install (console pattern, non-zero qemu exit) or timeout;
    qemu is always gone when this returns.
    """
    start = time.monotonic()
    offset = 0
    machine = qemu.Machine(spec, stderr_log=stderr_log, console=console)
    with machine:
        assert machine.proc is not None
        while not machine.wait_exit(poll):
            fatal, offset = _fatal_line(spec.serial_log, offset)
            if fatal:
                raise machine.error(
                    f"the installer failed: {fatal}", "see the installer's serial console log"
                )
            question = pending_question(_tail(spec.serial_log))
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
        fatal, offset = _fatal_line(spec.serial_log, offset)
        if status != 0 or fatal:
            raise machine.error(f"the installer failed: {fatal or f'qemu exit status {status}'}")
    with contextlib.suppress(OSError):
        spec.qmp_socket.unlink()
    return time.monotonic() - start
