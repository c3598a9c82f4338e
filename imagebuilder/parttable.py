"""Partition tables and filesystem signatures, parsed from raw bytes.

Pure functions over a ``read(offset, length) -> bytes`` callable (``disk`` passes
one backed by libnbd; tests pass one over a bytes object): GPT, MBR (with
extended/logical partitions), a whole-disk filesystem, and the superblock magic
of each partition (ext2/3/4, xfs, btrfs, vfat, LVM2 PV, swap). From that,
:func:`pick_root` and :func:`pick_boot` choose what the export reads. This module
does no I/O of its own and knows nothing about servers or mounts.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass

Reader = Callable[[int, int], bytes]

SECTOR = 512
#: GPT type of the Boot Loader Specification's extended boot partition (/boot).
XBOOTLDR_GUID = "bc13c2ff-59e6-4262-a352-b275fd6f7172"
ESP_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
BIOS_BOOT_GUID = "21686148-6449-6e6f-744e-656564454649"
LVM_GUID = "e6d6d379-f507-44c2-a23c-238f2a3df928"
MBR_XBOOTLDR = 0xEA
MBR_EXTENDED = (0x05, 0x0F, 0x85)
MBR_LVM = 0x8E
#: Filesystems a Linux root can live on.
LINUX_FS = ("ext2", "ext3", "ext4", "xfs", "btrfs")
ROOT_LABEL = "cloudimg-rootfs"


@dataclass(frozen=True)
class Partition:
    number: int  # 1-based as the kernel names it; 0 = the whole disk holds a filesystem
    start: int  # bytes
    size: int  # bytes
    type: str  # GPT type GUID (lower case), or "mbr:0xNN"
    name: str = ""  # GPT partition name
    fstype: str = ""  # ext4 | xfs | btrfs | vfat | LVM2_member | swap | ""
    label: str = ""  # filesystem label
    #: ext: the journal holds transactions not yet replayed (unclean shutdown).
    needs_recovery: bool = False

    @property
    def is_xbootldr(self) -> bool:
        return self.type in (XBOOTLDR_GUID, f"mbr:0x{MBR_XBOOTLDR:02x}")


@dataclass(frozen=True)
class Layout:
    table: str  # "gpt" | "mbr" | "none"
    size: int
    partitions: tuple[Partition, ...]


def _guid(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw))


def _parse_gpt(read: Reader, disk_size: int) -> list[tuple[int, int, int, str, str]] | None:
    hdr = read(SECTOR, SECTOR)
    if hdr[:8] != b"EFI PART":
        return None
    hsize = struct.unpack_from("<I", hdr, 12)[0]
    crc = struct.unpack_from("<I", hdr, 16)[0]
    check = bytearray(hdr[:hsize])
    check[16:20] = b"\0\0\0\0"
    if not 92 <= hsize <= SECTOR or zlib.crc32(check) != crc:
        return None
    entries_lba, count, esize = struct.unpack_from("<QII", hdr, 72)
    if esize < 128 or count > 4096:
        return None
    table = read(entries_lba * SECTOR, count * esize)
    out = []
    for i in range(count):
        e = table[i * esize : (i + 1) * esize]
        if e[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", e, 32)
        name = e[56:128].decode("utf-16-le", "replace").split("\0", 1)[0]
        start, size = first * SECTOR, (last - first + 1) * SECTOR
        if last >= first and start + size <= disk_size:
            out.append((i + 1, start, size, _guid(e[:16]), name))
    return out


def _parse_mbr(read: Reader, disk_size: int) -> list[tuple[int, int, int, str, str]] | None:
    mbr = read(0, SECTOR)
    if mbr[510:512] != b"\x55\xaa":
        return None
    out: list[tuple[int, int, int, str, str]] = []
    for i in range(4):
        ptype, lba, nsec = struct.unpack_from("<4xB3xII", mbr, 446 + 16 * i)
        if ptype == 0 or nsec == 0:
            continue
        if ptype == 0xEE:  # protective MBR of a GPT disk whose GPT did not parse
            return None
        if ptype in MBR_EXTENDED:
            out.extend(_parse_logical(read, lba, disk_size))
        elif (lba + nsec) * SECTOR <= disk_size:
            out.append((i + 1, lba * SECTOR, nsec * SECTOR, f"mbr:0x{ptype:02x}", ""))
    # Boot sector of a bare FAT filesystem also ends in 55aa: no entries means no table.
    return out or None


def _parse_logical(
    read: Reader, ext_lba: int, disk_size: int
) -> list[tuple[int, int, int, str, str]]:
    out = []
    ebr_lba, number = ext_lba, 5
    for _ in range(128):  # a bound on broken chains
        ebr = read(ebr_lba * SECTOR, SECTOR)
        if ebr[510:512] != b"\x55\xaa":
            break
        ptype, lba, nsec = struct.unpack_from("<4xB3xII", ebr, 446)
        if ptype and nsec and (ebr_lba + lba + nsec) * SECTOR <= disk_size:
            out.append((number, (ebr_lba + lba) * SECTOR, nsec * SECTOR, f"mbr:0x{ptype:02x}", ""))
            number += 1
        ntype, nlba = struct.unpack_from("<4xB3xI", ebr, 462)
        if ntype not in MBR_EXTENDED or nlba == 0:
            break
        ebr_lba = ext_lba + nlba
    return out


def probe_fs(read: Reader, start: int, size: int) -> tuple[str, str, bool]:
    """(fstype, label, needs_recovery) of the filesystem at ``start``, "" if unknown."""
    if size >= 2048:
        sb = read(start + 1024, 1024)
        if sb[56:58] == b"\x53\xef":
            compat, incompat = struct.unpack_from("<II", sb, 92)
            label = sb[120:136].split(b"\0", 1)[0].decode("utf-8", "replace")
            has_journal, recover = bool(compat & 0x4), bool(incompat & 0x4)
            ext4 = bool(incompat & (0x40 | 0x80 | 0x200))  # extents, 64bit, flex_bg
            fstype = "ext4" if ext4 else ("ext3" if has_journal else "ext2")
            return fstype, label, recover
    head = read(start, 4096) if size >= 4096 else b""
    if head[:4] == b"XFSB":
        return "xfs", head[108:120].split(b"\0", 1)[0].decode("utf-8", "replace"), False
    if head[512 + 24 : 512 + 32] == b"LVM2 001" or head[512:520] == b"LABELONE":
        return "LVM2_member", "", False
    if head[4086:4096] in (b"SWAPSPACE2", b"SWAP-SPACE"):
        return "swap", "", False
    if head[510:512] == b"\x55\xaa" and (
        head[82:87] == b"FAT32" or head[54:59] in (b"FAT12", b"FAT16")
    ):
        lab = head[71:82] if head[82:87] == b"FAT32" else head[43:54]
        return "vfat", lab.decode("ascii", "replace").strip(), False
    if size >= 0x10040 + 4096:
        bt = read(start + 0x10000, 4096)
        if bt[0x40:0x48] == b"_BHRfS_M":
            return (
                "btrfs",
                bt[0x12B : 0x12B + 256].split(b"\0", 1)[0].decode("utf-8", "replace"),
                False,
            )
    return "", "", False


def read_layout(read: Reader, disk_size: int) -> Layout:
    """Parse the partition table (GPT first, then MBR) and probe every partition."""
    table = "gpt"
    raw = _parse_gpt(read, disk_size)
    if raw is None:
        table, raw = "mbr", _parse_mbr(read, disk_size)
    if raw is None:
        table, raw = "none", [(0, 0, disk_size, "", "")]
    parts = []
    for number, start, size, ptype, name in raw:
        fstype, label, recover = probe_fs(read, start, size)
        parts.append(Partition(number, start, size, ptype, name, fstype, label, recover))
    if table == "none" and not parts[0].fstype:
        parts = []
    return Layout(table, disk_size, tuple(parts))


def pick_root(layout: Layout) -> Partition | None:
    """The partition named or labelled cloudimg-rootfs, else the largest Linux filesystem.

    An LVM physical volume counts as a candidate (its root is a logical volume
    that only libguestfs can reach); the XBOOTLDR /boot partition never does.
    """
    for p in layout.partitions:
        if ROOT_LABEL in (p.name, p.label) and p.fstype in LINUX_FS:
            return p
    candidates = [
        p
        for p in layout.partitions
        if (p.fstype in LINUX_FS or p.fstype == "LVM2_member") and not p.is_xbootldr
    ]
    if not candidates:
        return None
    # Prefer a real filesystem over a PV of the same size; then the largest.
    return max(candidates, key=lambda p: (p.size, p.fstype != "LVM2_member", -p.number))


def pick_boot(layout: Layout) -> Partition | None:
    """The XBOOTLDR partition (newer Ubuntu images keep kernels there), if any."""
    for p in layout.partitions:
        if p.is_xbootldr and p.fstype in (*LINUX_FS, "vfat"):
            return p
    return None
