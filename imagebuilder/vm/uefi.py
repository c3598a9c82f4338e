"""The UEFI firmware a VM boots with: OVMF (amd64) or AAVMF (arm64).

:func:`prepare_firmware` finds the read-only code image and copies the vars template
into the build directory, so every build gets its own writable vars store (the
AAVMF images padded to the size qemu's virt machine wants); BIOS needs neither.
This module copies files and names the host package that provides them; it builds
no command line (``qemu_cmdline`` does) and starts nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..config.tree import Firmware
from ..errors import MachineError, host_package_hint

#: (code, vars template) per arch for UEFI.
UEFI_FIRMWARE = {
    "amd64": (Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/usr/share/OVMF/OVMF_VARS_4M.fd")),
    "arm64": (Path("/usr/share/AAVMF/AAVMF_CODE.fd"), Path("/usr/share/AAVMF/AAVMF_VARS.fd")),
}
FIRMWARE_PACKAGE = {"amd64": "ovmf", "arm64": "qemu-efi-aarch64"}
#: qemu's virt machine wants both pflash images exactly this size.
AARCH64_PFLASH_SIZE = 64 << 20


def prepare_firmware(arch: str, firmware: Firmware, build_dir: Path) -> tuple[Path | None, ...]:
    """(code, vars) for UEFI: vars copied into ``build_dir`` (AAVMF padded); BIOS: (None, None)."""
    if arch == "amd64" and firmware is Firmware.BIOS:
        return (None, None)
    code, template = UEFI_FIRMWARE[arch]
    for path in (code, template):
        if not path.is_file():
            raise MachineError(
                f"UEFI firmware {path} not found",
                hint=host_package_hint(FIRMWARE_PACKAGE[arch])
                + (" (or use --firmware bios)" if arch == "amd64" else ""),
            )
    vars_copy = build_dir / f"efivars-{arch}.fd"
    shutil.copyfile(template, vars_copy)
    if arch == "arm64":
        if code.stat().st_size != AARCH64_PFLASH_SIZE:
            padded = build_dir / "efi-code-arm64.fd"
            shutil.copyfile(code, padded)
            code = padded
        for p in (code, vars_copy):
            if p.parent == build_dir:
                with open(p, "r+b") as fh:
                    fh.truncate(AARCH64_PFLASH_SIZE)
    return (code, vars_copy)
