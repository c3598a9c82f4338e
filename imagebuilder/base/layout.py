"""Raw disks laid out like an Ubuntu cloud image: partition, format, mount, chroot, grub.

``bootstrap`` uses this to turn an empty raw file into a bootable disk: a GPT with
partition 14 (BIOS boot, amd64 only), 15 (ESP, FAT32 labelled ``UEFI``) near the
start and partition 1 (ext4 labelled ``cloudimg-rootfs``) after them, last, so
growpart can grow it. Every identifier (disk GUID, partition GUIDs, filesystem
UUIDs) is derived from a seed, so the same recipe gives the same identifiers.

Every loop device, mount and bind mount is entered on the caller's ExitStack and
released on any error or Ctrl-C. This module knows no packages, mirrors or caches,
and never prints.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import run
from ..errors import BootstrapError, CommandError

SECTOR = 512
MIB = 1024 * 1024
GIB = 1024 * MIB

BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_FS_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ROOT_LABEL = "cloudimg-rootfs"
ESP_LABEL = "UEFI"

#: ext4 features every supported target (focal .. trixie) can fsck and grub can read:
#: no orphan_file or metadata_csum_seed, whatever the host's mke2fs defaults to.
EXT4_FEATURES = (
    "sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr,"
    "has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize"
)

#: Kernel consoles: the screen, then the serial port (the last is /dev/console).
CONSOLES = {"amd64": "console=tty1 console=ttyS0", "arm64": "console=tty1 console=ttyAMA0"}

FSTAB = (
    f"LABEL={ROOT_LABEL}\t/\text4\tdiscard,errors=remount-ro\t0 1\n"
    f"LABEL={ESP_LABEL}\t/boot/efi\tvfat\tumask=0077,nofail\t0 1\n"
)

_NAMESPACE = uuid.UUID("6f1d8a52-0c4e-4d7e-9a53-1b2f0e6c9d41")


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # first sector
    size: int | None  # sectors; None runs to the end of the disk
    type: str  # GPT type GUID
    uuid: str  # unique partition GUID


@dataclass(frozen=True)
class DiskLayout:
    """Everything needed to partition and format one disk, reproducibly."""

    size: int  # bytes
    disk_guid: str
    partitions: tuple[Partition, ...]
    root_uuid: str  # ext4 filesystem UUID
    root_hash_seed: str  # ext4 directory hash seed
    esp_serial: str  # FAT volume id, 8 hex digits

    def partition(self, number: int) -> Partition:
        for p in self.partitions:
            if p.number == number:
                return p
        raise KeyError(number)

    def sfdisk_script(self) -> str:
        """Input for ``sfdisk``: a GPT with fixed GUIDs, entries in table slot order."""
        lines = [
            "label: gpt",
            f"label-id: {self.disk_guid}",
            "unit: sectors",
            "first-lba: 2048",
            "sector-size: 512",
            "",
        ]
        for p in sorted(self.partitions, key=lambda p: p.number):
            size = f", size={p.size}" if p.size is not None else ""
            lines.append(f"p{p.number} : start={p.start}{size}, type={p.type}, uuid={p.uuid}")
        return "\n".join(lines) + "\n"


def derived_uuid(seed: str, what: str) -> str:
    """A stable UUID for ``what`` (e.g. "root-fs") of the disk made from ``seed``."""
    return str(uuid.uuid5(_NAMESPACE, f"{seed}:{what}")).upper()


def cloudimg_layout(seed: str, size: int = 3 * GIB, *, arch: str = "amd64") -> DiskLayout:
    """The partition table of an Ubuntu cloud image (jammy), sized ``size`` bytes.

    Sectors as on the real image: 14 at 2048 (4 MiB BIOS boot), 15 at 10240
    (106 MiB ESP), 1 from 227328 to the end. Only x86 has a BIOS: other arches
    (arm64) have no partition 14 and their ESP starts at 2048, as on their images.
    """
    if size % MIB or size < 1 * GIB:
        raise ValueError(f"disk size must be a whole number of MiB and >= 1 GiB, got {size}")
    root = Partition(1, 227328, None, LINUX_FS_TYPE, derived_uuid(seed, "part-1"))
    esp_uuid = derived_uuid(seed, "part-15")
    if arch == "amd64":
        parts: tuple[Partition, ...] = (
            root,
            Partition(14, 2048, 8192, BIOS_BOOT_TYPE, derived_uuid(seed, "part-14")),
            Partition(15, 10240, 217088, ESP_TYPE, esp_uuid),
        )
    else:
        parts = (root, Partition(15, 2048, 225280, ESP_TYPE, esp_uuid))
    return DiskLayout(
        size=size,
        disk_guid=derived_uuid(seed, "disk"),
        partitions=parts,
        root_uuid=derived_uuid(seed, "root-fs").lower(),
        root_hash_seed=derived_uuid(seed, "root-hash").lower(),
        esp_serial=derived_uuid(seed, "esp-fs").replace("-", "")[:8],
    )


def create_raw(path: Path, layout: DiskLayout) -> None:
    """A sparse raw file of the layout's size, partitioned."""
    with path.open("wb") as f:
        f.truncate(layout.size)
    run.run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", path],
        input=layout.sfdisk_script().encode(),
    )


# ---- loop devices and mounts --------------------------------------------------------


@contextlib.contextmanager
def attached(image: Path, layout: DiskLayout) -> Iterator[Path]:
    """Attach ``image`` to a free loop device with its partitions; detach on exit.

    Some kernels lack partition-table parsers, so partitions are also added from
    user space (``partx``), which reads the table itself. --partscan also makes
    the kernel drop the partitions again on detach.
    """
    proc = run.run(["losetup", "--find", "--show", "--partscan", image])
    dev = Path(proc.stdout.decode().strip())
    try:
        if all(partition_device(dev, p.number).exists() for p in layout.partitions):
            run.run(["partx", "--update", dev])  # match the table, even if nodes were stale
        else:
            run.run(["partx", "--delete", dev], check=False)
            run.run(["partx", "--add", dev])
        for p in layout.partitions:
            _wait_for(partition_device(dev, p.number))
        yield dev
    finally:
        _retry(["losetup", "--detach", dev])


def partition_device(dev: Path, number: int) -> Path:
    return Path(f"{dev}p{number}")


def _wait_for(node: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not node.exists():
        if time.monotonic() > deadline:
            raise BootstrapError(
                f"partition device {node} did not appear",
                hint="the host kernel must support loop partitions (losetup -P or partx)",
            )
        time.sleep(0.1)


def _retry(argv: Sequence[str | os.PathLike[str]], tries: int = 5) -> None:
    """Run a release command (umount, losetup -d), retrying briefly while busy."""
    for attempt in range(tries):
        try:
            run.run(argv)
            return
        except CommandError:
            if attempt == tries - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def format_partitions(dev: Path, layout: DiskLayout, *, epoch: int | None = None) -> None:
    """ext4 ``cloudimg-rootfs`` on 1, FAT32 ``UEFI`` on 15, with the layout's ids."""
    env = {"MKE2FS_CONFIG": "/dev/null"}  # ignore the host's defaults: features below
    if epoch is not None:
        env["E2FSPROGS_FAKE_TIME"] = str(epoch)
    run.run(
        [
            "mkfs.ext4", "-q", "-F",
            "-L", ROOT_LABEL,
            "-U", layout.root_uuid,
            "-b", "4096", "-I", "256", "-i", "16384",
            "-O", EXT4_FEATURES,
            "-E", f"hash_seed={layout.root_hash_seed},lazy_itable_init=0,lazy_journal_init=0",
            partition_device(dev, 1),
        ],
        env=env,
    )  # fmt: skip
    run.run(
        [
            "mkfs.vfat", "--invariant", "-F", "32", "-n", ESP_LABEL, "-i", layout.esp_serial,
            partition_device(dev, 15),
        ]
    )  # fmt: skip


@contextlib.contextmanager
def mounted(
    source: str | os.PathLike[str], target: Path, *options: str, recursive_umount: bool = False
) -> Iterator[Path]:
    """``mount [options] source target``; unmounted on exit (recursively if asked)."""
    target.mkdir(parents=True, exist_ok=True)
    run.run(["mount", *options, source, target])
    try:
        yield target
    finally:
        umount(target, recursive=recursive_umount)


def umount(target: Path, *, recursive: bool = False) -> None:
    """Unmount, retrying while busy; as a last resort detach lazily so nothing leaks."""
    argv: list[str | os.PathLike[str]] = ["umount", *(["-R"] if recursive else []), target]
    try:
        _retry(argv)
    except CommandError:
        run.run(["umount", "--lazy", *(["-R"] if recursive else []), target], check=False)
        raise


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path`` (so nobody deletes a tree with /dev bound in it)."""
    prefix = os.path.realpath(path)
    found: list[Path] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt == prefix or mnt.startswith(prefix.rstrip("/") + "/"):
                found.append(Path(mnt))
    return found


@contextlib.contextmanager
def chroot_mounts(root: Path, disk: Path, layout: DiskLayout) -> Iterator[Path]:
    """A private /dev (plus /dev/pts, /proc, /sys) inside ``root`` for chrooted tools.

    /dev is a fresh tmpfs holding the basic character devices, ``disk`` and its
    partitions, and the ``/dev/disk/by-uuid`` link of the root filesystem that
    udev would make (grub-mkconfig writes ``root=UUID=...`` only when it exists).
    The host's /dev is never exposed, so nothing in the chroot can touch it.
    """
    with contextlib.ExitStack() as stack:
        dev = stack.enter_context(mounted("tmpfs", root / "dev", "-t", "tmpfs", "-o", "mode=755"))
        _populate_dev(dev, disk, layout)
        stack.enter_context(
            mounted("devpts", dev / "pts", "-t", "devpts", "-o", "newinstance,ptmxmode=0666")
        )
        stack.enter_context(mounted("proc", root / "proc", "-t", "proc"))
        stack.enter_context(mounted("/sys", root / "sys", "--bind"))
        yield root


def _mknod_like(host: Path, node: Path) -> None:
    st = os.stat(host)
    os.mknod(node, st.st_mode, st.st_rdev)
    os.chmod(node, stat.S_IMODE(st.st_mode))


def _populate_dev(dev: Path, disk: Path, layout: DiskLayout) -> None:
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        _mknod_like(Path("/dev", name), dev / name)
    links = {"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
             "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}  # fmt: skip
    for name, target in links.items():
        (dev / name).symlink_to(target)
    (dev / "shm").mkdir()
    (dev / "pts").mkdir()
    _mknod_like(disk, dev / disk.name)
    for p in layout.partitions:
        part = partition_device(disk, p.number)
        _mknod_like(part, dev / part.name)
    by_uuid = dev / "disk" / "by-uuid"
    by_uuid.mkdir(parents=True)
    (by_uuid / layout.root_uuid).symlink_to(f"../../{partition_device(disk, 1).name}")


def in_chroot(root: Path, *argv: str, env: dict[str, str] | None = None) -> str:
    """Run a program inside ``root`` (mounts from :func:`chroot_mounts`); its stdout."""
    proc = run.run(["chroot", root, *argv], env=env)
    return proc.stdout.decode("utf-8", "replace")


# ---- boot loader -----------------------------------------------------------------------

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


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` inside a target tree (replacing a symlink, not following it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    path.write_text(text)
    path.chmod(mode)


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
