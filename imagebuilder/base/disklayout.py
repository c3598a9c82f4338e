"""The disk layout of a bootstrap base, like an Ubuntu cloud image: partition table and filesystems.

``bootstrap`` uses this to turn an empty raw file into a disk: a GPT with
partition 14 (BIOS boot, amd64 only), 15 (ESP, FAT32 labelled ``UEFI``) near the
start and partition 1 (ext4 labelled ``cloudimg-rootfs``) after them, last, so
growpart can grow it. Every identifier (disk GUID, partition GUIDs, filesystem
UUIDs) is derived from a seed, so the same recipe gives the same identifiers.

This module writes the table (``sfdisk``) and makes the filesystems (``mkfs``)
only: it attaches no loop device, mounts nothing (:mod:`imagebuilder.base.mounts`),
installs no boot loader, knows no packages, mirrors or caches, and never prints.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from .. import run

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


def partition_device(dev: Path, number: int) -> Path:
    return Path(f"{dev}p{number}")


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
