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
    uuid: str = ""  # filesystem UUID (vfat: its serial, XXXX-XXXX)
    partuuid: str = ""  # GPT unique partition GUID, or MBR "<disk id>-<NN>"

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


_Raw = tuple[int, int, int, str, str, str]  # number, start, size, type, name, partuuid


def _parse_gpt(read: Reader, disk_size: int) -> list[_Raw] | None:
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
            out.append((i + 1, start, size, _guid(e[:16]), name, _guid(e[16:32])))
    return out


def _parse_mbr(read: Reader, disk_size: int) -> list[_Raw] | None:
    mbr = read(0, SECTOR)
    if mbr[510:512] != b"\x55\xaa":
        return None
    disk_id = f"{struct.unpack_from('<I', mbr, 440)[0]:08x}"
    out: list[_Raw] = []
    for i in range(4):
        ptype, lba, nsec = struct.unpack_from("<4xB3xII", mbr, 446 + 16 * i)
        if ptype == 0 or nsec == 0:
            continue
        if ptype == 0xEE:  # protective MBR of a GPT disk whose GPT did not parse
            return None
        if ptype in MBR_EXTENDED:
            out.extend(_parse_logical(read, lba, disk_size, disk_id))
        elif (lba + nsec) * SECTOR <= disk_size:
            out.append(
                (
                    i + 1,
                    lba * SECTOR,
                    nsec * SECTOR,
                    f"mbr:0x{ptype:02x}",
                    "",
                    f"{disk_id}-{i + 1:02x}",
                )
            )
    # Boot sector of a bare FAT filesystem also ends in 55aa: no entries means no table.
    return out or None


def _parse_logical(read: Reader, ext_lba: int, disk_size: int, disk_id: str) -> list[_Raw]:
    out = []
    ebr_lba, number = ext_lba, 5
    for _ in range(128):  # a bound on broken chains
        ebr = read(ebr_lba * SECTOR, SECTOR)
        if ebr[510:512] != b"\x55\xaa":
            break
        ptype, lba, nsec = struct.unpack_from("<4xB3xII", ebr, 446)
        if ptype and nsec and (ebr_lba + lba + nsec) * SECTOR <= disk_size:
            start = (ebr_lba + lba) * SECTOR
            out.append(
                (number, start, nsec * SECTOR, f"mbr:0x{ptype:02x}", "", f"{disk_id}-{number:02x}")
            )
            number += 1
        ntype, nlba = struct.unpack_from("<4xB3xI", ebr, 462)
        if ntype not in MBR_EXTENDED or nlba == 0:
            break
        ebr_lba = ext_lba + nlba
    return out


@dataclass(frozen=True)
class FsInfo:
    fstype: str = ""
    label: str = ""
    uuid: str = ""
    needs_recovery: bool = False


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace").strip()


def probe_fs(read: Reader, start: int, size: int) -> FsInfo:
    """What filesystem (if any) starts at ``start``, from its superblock."""
    if size >= 2048:
        sb = read(start + 1024, 1024)
        if sb[56:58] == b"\x53\xef":
            compat, incompat = struct.unpack_from("<II", sb, 92)
            ext4 = bool(incompat & (0x40 | 0x80 | 0x200))  # extents, 64bit, flex_bg
            fstype = "ext4" if ext4 else ("ext3" if compat & 0x4 else "ext2")
            return FsInfo(
                fstype, _text(sb[120:136]), str(uuid.UUID(bytes=sb[104:120])), bool(incompat & 0x4)
            )
    head = read(start, 4096) if size >= 4096 else b""
    if head[:4] == b"XFSB":
        return FsInfo("xfs", _text(head[108:120]), str(uuid.UUID(bytes=head[32:48])))
    if head[512 + 24 : 512 + 32] == b"LVM2 001" or head[512:520] == b"LABELONE":
        return FsInfo("LVM2_member")
    if head[4086:4096] in (b"SWAPSPACE2", b"SWAP-SPACE"):
        return FsInfo("swap", _text(head[1052:1068]), str(uuid.UUID(bytes=head[1036:1052])))
    fat32 = head[82:87] == b"FAT32"
    if head[510:512] == b"\x55\xaa" and (fat32 or head[54:59] in (b"FAT12", b"FAT16")):
        serial = struct.unpack_from("<I", head, 67 if fat32 else 39)[0]
        label = _text(head[71:82] if fat32 else head[43:54])
        return FsInfo(
            "vfat", "" if label == "NO NAME" else label, f"{serial >> 16:04X}-{serial & 0xFFFF:04X}"
        )
    if size >= 0x10040 + 4096:
        bt = read(start + 0x10000, 4096)
        if bt[0x40:0x48] == b"_BHRfS_M":
            return FsInfo(
                "btrfs", _text(bt[0x12B : 0x12B + 256]), str(uuid.UUID(bytes=bt[0x20:0x30]))
            )
    return FsInfo()


def read_layout(read: Reader, disk_size: int) -> Layout:
    """Parse the partition table (GPT first, then MBR) and probe every partition."""
    table = "gpt"
    raw = _parse_gpt(read, disk_size)
    if raw is None:
        table, raw = "mbr", _parse_mbr(read, disk_size)
    if raw is None:
        table, raw = "none", [(0, 0, disk_size, "", "", "")]
    parts = []
    for number, start, size, ptype, name, partuuid in raw:
        fs = probe_fs(read, start, size)
        parts.append(
            Partition(
                number,
                start,
                size,
                ptype,
                name,
                fs.fstype,
                fs.label,
                fs.needs_recovery,
                fs.uuid,
                partuuid,
            )
        )
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


def pick_boot(layout: Layout, fstab: str = "") -> Partition | None:
    """The partition mounted on /boot: XBOOTLDR (newer Ubuntu images), else per ``fstab``.

    fstab sources understood: UUID=, LABEL=, PARTUUID=, PARTLABEL= and their
    /dev/disk/by-* forms (device names like /dev/sda2 mean nothing in a disk image).
    """
    for p in layout.partitions:
        if p.is_xbootldr and p.fstype in LINUX_FS:
            return p
    for line in fstab.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0].startswith("#") or fields[1].rstrip("/") != "/boot":
            continue
        key, _, value = fields[0].partition("=")
        for form, attr in (
            ("by-uuid", "UUID"),
            ("by-label", "LABEL"),
            ("by-partuuid", "PARTUUID"),
            ("by-partlabel", "PARTLABEL"),
        ):
            if key.startswith(f"/dev/disk/{form}/"):
                key, value = attr, key.rsplit("/", 1)[1]
        field = {"UUID": "uuid", "LABEL": "label", "PARTUUID": "partuuid", "PARTLABEL": "name"}.get(
            key
        )
        for p in layout.partitions:
            if field and value and str(getattr(p, field)).lower() == value.strip('"').lower():
                return p if p.fstype in LINUX_FS else None
    return None
