"""Making a bootstrap disk boot: fstab and grub settings, grub on BIOS and UEFI, the check.

:func:`write_boot_config` writes fstab (by label), the grub defaults (serial and
screen console) and initramfs settings before packages run their scripts;
:func:`install_grub` puts grub i386-pc in the BIOS boot partition (amd64) and
shim with signed grub on the ESP, through mtools, then runs update-grub;
:func:`boot_problems` says what would stop the finished disk from booting.

This module neither partitions, formats nor mounts (its caller hands it a
mounted root and an attached disk), installs no package (grub and shim come
from the package set), and never prints.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from .. import run
from ..errors import BootstrapError, CommandError
from .chroot import write_file
from .disklayout import ESP_LABEL, ROOT_LABEL, partition_device

#: Kernel consoles: the screen, then the serial port (the last is /dev/console).
CONSOLES = {"amd64": "console=tty1 console=ttyS0", "arm64": "console=tty1 console=ttyAMA0"}

FSTAB = (
    f"LABEL={ROOT_LABEL}\t/\text4\tdiscard,errors=remount-ro\t0 1\n"
    f"LABEL={ESP_LABEL}\t/boot/efi\tvfat\tumask=0077,nofail\t0 1\n"
)

#: Debian arch -> (grub EFI platform, EFI file suffix).
EFI_ARCH = {"amd64": ("x86_64-efi", "x64"), "arm64": ("arm64-efi", "aa64")}


def removable_loader(arch: str) -> str:
    """Path of the removable-media EFI loader on the ESP (what firmware boots by default)."""
    return f"EFI/BOOT/BOOT{EFI_ARCH[arch][1].upper()}.EFI"


def esp_stub_config(root_uuid: str) -> str:
    """The grub.cfg next to grub on the ESP: find the root filesystem, read its grub.cfg."""
    return (
        f"search.fs_uuid {root_uuid} root\n"
        "set prefix=($root)'/boot/grub'\n"
        "configfile $prefix/grub.cfg\n"
    )


def _signed(root: Path, candidates: Sequence[str]) -> Path:
    for c in candidates:
        if (root / c).is_file():
            return root / c
    raise BootstrapError(
        f"signed boot loader missing in the target: {candidates[0]}",
        hint="the package set must include shim-signed and the grub-efi-<arch>-signed package",
    )


def stage_esp(root: Path, stage: Path, *, arch: str, bootloader_id: str, root_uuid: str) -> None:
    """Lay out the ESP's files under ``stage``: shim + signed grub, twice.

    What ``grub-install --uefi-secure-boot`` writes, once as ``EFI/<id>/`` and once
    on the removable-media path ``EFI/BOOT/`` (firmware with no boot entry, as on
    a freshly deployed machine, falls back to it). Done by hand because
    grub-install insists on a mounted FAT filesystem, which needs a kernel vfat
    driver the build host may lack; mtools writes the files instead.
    """
    platform, suffix = EFI_ARCH[arch]
    shim = _signed(root, [f"usr/lib/shim/shim{suffix}.efi.signed",
                          f"usr/lib/shim/shim{suffix}.efi.signed.latest"])  # fmt: skip
    grub = _signed(root, [f"usr/lib/grub/{platform}-signed/grub{suffix}.efi.signed"])
    mok = root / f"usr/lib/shim/mm{suffix}.efi.signed"
    for sub, loader in (
        ("BOOT", f"BOOT{suffix.upper()}.EFI"),
        (bootloader_id, f"shim{suffix}.efi"),
    ):
        d = stage / "EFI" / sub
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shim, d / loader)
        shutil.copyfile(grub, d / f"grub{suffix}.efi")
        if mok.is_file():
            shutil.copyfile(mok, d / f"mm{suffix}.efi")
        (d / "grub.cfg").write_text(esp_stub_config(root_uuid))
    # Modules next to grub.cfg, for the unsigned path (grub-install copies them too).
    shutil.copytree(root / "usr/lib/grub" / platform, root / "boot/grub" / platform,
                    dirs_exist_ok=True)  # fmt: skip


def copy_to_fat(stage: Path, device: Path, *, epoch: int | None = None) -> None:
    """Copy the tree under ``stage`` to the root of the FAT filesystem on ``device``
    (with ``epoch``, every timestamp mtools writes is that time)."""
    env = {"MTOOLS_SKIP_CHECK": "1"}
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(epoch)
    items = sorted(stage.iterdir())
    if items:
        run.run(["mcopy", "-s", "-Q", "-i", device, *items, "::/"], env=env)


def list_fat(device: Path) -> list[str]:
    """Every path on the FAT filesystem on ``device`` (``EFI/BOOT/BOOTX64.EFI``...)."""
    out = run.run(["mdir", "-/", "-b", "-i", device, "::/"], env={"MTOOLS_SKIP_CHECK": "1"})
    return [
        line.strip().removeprefix("::/")
        for line in out.stdout.decode("utf-8", "replace").splitlines()
        if line.strip()
    ]


def install_grub(
    root: Path,
    dev: Path,
    *,
    arch: str,
    bootloader_id: str,
    root_uuid: str,
    stage: Path,
    log: Path | None = None,
    epoch: int | None = None,
) -> None:
    """Make the disk on ``dev`` (root fs mounted at ``root``) bootable by BIOS and UEFI.

    amd64 gets grub i386-pc in the BIOS boot partition; every arch gets shim and
    signed grub on the ESP (partition 15); then update-grub writes grub.cfg.
    """
    if arch not in EFI_ARCH:
        raise BootstrapError(f"no grub recipe for architecture {arch}", hint="use amd64 or arm64")
    steps: list[list[str]] = []
    if arch == "amd64":
        steps.append(["grub-install", "--target=i386-pc", str(dev)])
    steps.append(["update-grub"])
    for argv in steps:
        try:
            out = run.run(["chroot", root, *argv])
        except CommandError as exc:
            raise BootstrapError(
                f"{argv[0]} failed in the target: {exc.message}",
                hint="see the grub output below",
                details=exc.details,
            ) from exc
        if log is not None:
            with log.open("ab") as f:
                f.write(f"$ chroot {root} {' '.join(argv)}\n".encode() + out.stdout + out.stderr)
    stage_esp(root, stage, arch=arch, bootloader_id=bootloader_id, root_uuid=root_uuid)
    copy_to_fat(stage, partition_device(dev, 15), epoch=epoch)


def grub_defaults(arch: str) -> str:
    """/etc/default/grub.d snippet: serial + screen console, short timeout."""
    lines = [
        f'GRUB_CMDLINE_LINUX_DEFAULT="{CONSOLES[arch]}"',
        "GRUB_TIMEOUT=1",
        "GRUB_RECORDFAIL_TIMEOUT=1",
        "GRUB_DISABLE_OS_PROBER=true",
    ]
    if arch == "amd64":
        lines += ['GRUB_TERMINAL="serial console"', 'GRUB_SERIAL_COMMAND="serial --speed=115200"']
    return "# written by imagebuilder\n" + "\n".join(lines) + "\n"


def write_boot_config(root: Path, arch: str) -> None:
    """fstab by label, grub defaults, initramfs settings; before packages run their scripts.

    The initramfs gets ext4 and its fsck (the root device is not resolvable while
    bootstrapping, so "auto" would find nothing) and no resume device (not the
    build host's swap).
    """
    write_file(root / "etc/fstab", FSTAB)
    write_file(root / "etc/default/grub.d/50-imagebuilder.cfg", grub_defaults(arch))
    write_file(root / "etc/initramfs-tools/conf.d/resume", "RESUME=none\n")
    write_file(root / "etc/initramfs-tools/conf.d/imagebuilder-fstype", "FSTYPE=ext4\n")
    (root / "boot/efi").mkdir(parents=True, exist_ok=True)


def boot_problems(root: Path, dev: Path, *, arch: str, root_uuid: str) -> list[str]:
    """What would stop the disk on ``dev`` (root at ``root``) from booting; empty if none."""
    problems = []
    if not list((root / "boot").glob("vmlinu*-*")):
        problems.append("no kernel in /boot")
    grub_cfg = root / "boot/grub/grub.cfg"
    text = grub_cfg.read_text() if grub_cfg.is_file() else ""
    if CONSOLES[arch].split()[-1] not in text:
        problems.append("/boot/grub/grub.cfg missing or without the serial console")
    if f"root=UUID={root_uuid} " not in text:
        problems.append("/boot/grub/grub.cfg does not boot root=UUID of the root filesystem")
    if removable_loader(arch) not in list_fat(partition_device(dev, 15)):
        problems.append(f"no {removable_loader(arch)} on the ESP")
    if arch == "amd64" and not (root / "boot/grub/i386-pc/core.img").is_file():
        problems.append("grub i386-pc (BIOS) not installed")
    return problems
