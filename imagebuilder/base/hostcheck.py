"""Can this host bootstrap a base: its programs, and qemu-user for a foreign arch.

Checked before any slow work, so a missing tool or an unusable binfmt_misc entry
is one clear error instead of a half-built disk. Reads /proc and PATH; changes
nothing.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Mapping
from pathlib import Path

from .. import run
from ..errors import (
    ToolNotFoundError,
)
from ..families import catalogue

#: Host programs a build runs besides the family's own tool, and the host package of
#: each (checked before starting).
HOST_TOOLS = {
    "sfdisk": "fdisk", "partx": "util-linux",
    "losetup": "mount", "mount": "mount", "umount": "mount", "chroot": "coreutils",
    "fstrim": "util-linux", "mkfs.ext4": "e2fsprogs", "mkfs.vfat": "dosfstools",
    "mcopy": "mtools", "mdir": "mtools", "qemu-img": "qemu-utils",
}  # fmt: skip


def missing_tools(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Programs a build needs that are not installed, with their packages (``extra``: the
    family tool's own programs and their packages)."""
    found = {}
    wanted = {**(extra or {}), **HOST_TOOLS}  # the family tool first, as it always was
    for tool, pkg in wanted.items():
        try:
            run.which(tool)
        except ToolNotFoundError:
            found[tool] = pkg
    return found


BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")


#: ELF e_machine of each foreign arch, as binfmt_misc's "magic" shows it (hex, bytes 18-19).
ELF_MACHINE = {"amd64": "3e00", "arm64": "b700"}


def emulation_problem(arch: str, binfmt_dir: Path | None = None) -> str | None:
    """Why ``arch`` programs cannot run here (mmdebstrap and chroot need it), or None.

    A foreign arch needs an enabled binfmt_misc entry for its ELF binaries whose
    interpreter exists and is opened at registration (flag ``F``), so it also
    works inside the target's chroot, where the interpreter path does not exist.
    """
    if not emulated(arch):
        return None
    name = catalogue.QEMU_ARCH.get(arch, arch)
    binfmt_dir = binfmt_dir or BINFMT_DIR
    status = binfmt_dir / "status"
    try:
        if status.read_text().strip() != "enabled":
            return "binfmt_misc is disabled"
    except OSError:
        return f"binfmt_misc is not mounted on {binfmt_dir}"
    for entry in sorted(binfmt_dir.iterdir()):
        if entry.name in ("status", "register"):
            continue
        with contextlib.suppress(OSError):
            lines = entry.read_text().splitlines()
            fields = dict(ln.partition(" ")[::2] for ln in lines[1:])
            magic = fields.get("magic", "")
            if magic.startswith("7f454c4602") and magic[36:40] == ELF_MACHINE.get(arch):
                if lines[0] != "enabled":
                    return f"the binfmt_misc entry {entry.name} for {name} is disabled"
                if "F" not in fields.get("flags:", ""):
                    return f"the binfmt_misc entry {entry.name} lacks the F (fix-binary) flag"
                return None
    return f"no binfmt_misc entry runs {name} programs (qemu-user-static)"


def emulated(arch: str) -> bool:
    """Whether ``arch`` programs run through qemu-user here, where starting one costs much."""
    return catalogue.QEMU_ARCH.get(arch) != platform.machine()
