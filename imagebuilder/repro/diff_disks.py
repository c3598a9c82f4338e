"""Raw disk images compared block by block, and read as partition tables.

:func:`diff_raw` streams two (possibly compressed) disks side by side and reports the
4 KiB-aligned byte ranges that differ, named by the GPT or MBR partition they fall
in, plus any difference in the partition tables themselves (disk id, start, size,
type, GUID, name). :func:`partition_table` is also how ``lock`` finds the root
filesystem of a base disk.

It only reads; it never mounts, writes or prints.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from .diff_read import CHUNK, READ_ERRORS, Difference, open_decompressed, read_full, unreadable

PAGE = 4096
SECTOR = 512
MAX_RANGES_SHOWN = 8


# ---- raw disks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PartEntry:
    """One partition: number as the kernel names it, sectors, type, ids, name."""

    number: int
    start: int  # first sector
    sectors: int
    type: str
    guid: str
    name: str

    @property
    def label(self) -> str:
        return f"partition {self.number}" + (f" ({self.name})" if self.name else "")


@dataclass(frozen=True)
class PartTable:
    scheme: str  # gpt | mbr | none
    disk_id: str
    parts: tuple[PartEntry, ...]


def _guid(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw)).upper()


def partition_table(head: bytes) -> PartTable:
    """The GPT (else MBR) in the first bytes of a disk (the first 1 MiB is plenty)."""
    if len(head) >= 2 * SECTOR and head[SECTOR : SECTOR + 8] == b"EFI PART":
        hdr = head[SECTOR : 2 * SECTOR]
        disk_guid = _guid(hdr[56:72])
        entries_lba, count, size = struct.unpack_from("<QII", hdr, 72)
        parts = []
        for i in range(min(count, 256)):
            off = entries_lba * SECTOR + i * size
            if off + 128 > len(head):
                break
            ent = head[off : off + 128]
            if ent[:16] == bytes(16):
                continue
            first, last = struct.unpack_from("<QQ", ent, 32)
            name = ent[56:128].decode("utf-16-le", "replace").split("\x00", 1)[0]
            parts.append(
                PartEntry(i + 1, first, last - first + 1, _guid(ent[:16]), _guid(ent[16:32]), name)
            )
        return PartTable("gpt", disk_guid, tuple(parts))
    if len(head) >= SECTOR and head[510:512] == b"\x55\xaa":
        parts = []
        for i in range(4):
            ent = head[446 + 16 * i : 462 + 16 * i]
            ptype = ent[4]
            start, sectors = struct.unpack_from("<II", ent, 8)
            if ptype and sectors:
                parts.append(PartEntry(i + 1, start, sectors, f"0x{ptype:02x}", "", ""))
        return PartTable("mbr", f"0x{struct.unpack_from('<I', head, 440)[0]:08x}", tuple(parts))
    return PartTable("none", "", ())


def _compare_tables(ta: PartTable, tb: PartTable) -> list[Difference]:
    out: list[Difference] = []
    if (ta.scheme, ta.disk_id) != (tb.scheme, tb.disk_id):
        out.append(
            Difference(
                "partition", "table", f"{ta.scheme} {ta.disk_id} vs {tb.scheme} {tb.disk_id}"
            )
        )
    pa, pb = {p.number: p for p in ta.parts}, {p.number: p for p in tb.parts}
    for n in sorted(pa.keys() | pb.keys()):
        x, y = pa.get(n), pb.get(n)
        if x is None or y is None:
            out.append(
                Difference("partition", f"partition {n}", f"only in {'B' if x is None else 'A'}")
            )
            continue
        fields = [
            f"{f} {getattr(x, f)} vs {getattr(y, f)}"
            for f in ("start", "sectors", "type", "guid", "name")
            if getattr(x, f) != getattr(y, f)
        ]
        if fields:
            out.append(Difference("partition", x.label, "; ".join(fields)))
    return out


def _differing_pages(ba: bytes, bb: bytes, offset: int) -> Iterator[tuple[int, int]]:
    mva, mvb = memoryview(ba), memoryview(bb)
    n = max(len(ba), len(bb))
    for i in range(0, n, PAGE):
        if mva[i : i + PAGE] != mvb[i : i + PAGE]:
            yield offset + i, offset + min(i + PAGE, n)


def differing_ranges(a: IO[bytes], b: IO[bytes]) -> tuple[list[tuple[int, int]], int, int]:
    """Byte ranges [start, end) that differ (4 KiB granularity, merged); both sizes."""
    ranges: list[tuple[int, int]] = []
    pos = size_a = size_b = 0
    while True:
        ba, bb = read_full(a, CHUNK), read_full(b, CHUNK)
        size_a += len(ba)
        size_b += len(bb)
        if not ba and not bb:
            break
        if ba != bb:
            for start, end in _differing_pages(ba, bb, pos):
                if ranges and ranges[-1][1] == start:
                    ranges[-1] = (ranges[-1][0], end)
                else:
                    ranges.append((start, end))
        pos += max(len(ba), len(bb))
    return ranges, size_a, size_b


def _size(n: int) -> str:
    return (
        f"{n} bytes"
        if n < 1024
        else f"{n / 1024:.1f} KiB"
        if n < 1 << 20
        else f"{n / (1 << 20):.1f} MiB"
    )


def _region(table: PartTable, offset: int, disk_size: int) -> str:
    sector = offset // SECTOR
    for p in table.parts:
        if p.start <= sector < p.start + p.sectors:
            return p.label
    if table.scheme == "gpt" and (sector < 34 or sector >= disk_size // SECTOR - 33):
        return "partition table (GPT)"
    if table.scheme == "mbr" and sector == 0:
        return "partition table (MBR)"
    return "outside any partition"


def _split(ranges: list[tuple[int, int]], table: PartTable) -> list[tuple[int, int]]:
    """Cut ranges at partition boundaries so each lies in one region."""
    cuts = sorted(
        {p.start * SECTOR for p in table.parts}
        | {(p.start + p.sectors) * SECTOR for p in table.parts}
    )
    out = []
    for start, end in ranges:
        for c in cuts:
            if start < c < end:
                out.append((start, c))
                start = c
        out.append((start, end))
    return out


class _Prefixed:
    """A stream that first returns ``head`` (already read from ``rest``), then the rest."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self.head, self.rest = head, rest

    def read(self, n: int = -1) -> bytes:
        if self.head:
            chunk, self.head = (self.head, b"") if n < 0 else (self.head[:n], self.head[n:])
            return chunk
        return self.rest.read(n)


def diff_raw(a: Path, b: Path) -> list[Difference]:
    """Differences between two raw disks (each possibly compressed)."""
    try:
        with open_decompressed(a) as sa, open_decompressed(b) as sb:
            head_a, head_b = read_full(sa, CHUNK), read_full(sb, CHUNK)
            ta, tb = partition_table(head_a), partition_table(head_b)
            ranges, size_a, size_b = differing_ranges(
                cast(IO[bytes], _Prefixed(head_a, sa)), cast(IO[bytes], _Prefixed(head_b, sb))
            )
    except READ_ERRORS as exc:
        raise unreadable(Path(f"{a} or {b}"), exc) from None
    out: list[Difference] = []
    if size_a != size_b:
        out.append(Difference("size", "disk", f"{size_a} vs {size_b} bytes"))
    out.extend(_compare_tables(ta, tb))
    by_region: dict[str, list[tuple[int, int]]] = {}
    for start, end in _split(ranges, ta):
        by_region.setdefault(_region(ta, start, size_a), []).append((start, end))
    for region, rs in by_region.items():
        total = sum(e - s for s, e in rs)
        shown = ", ".join(f"0x{s:x}-0x{e - 1:x}" for s, e in rs[:MAX_RANGES_SHOWN])
        more = f" and {len(rs) - MAX_RANGES_SHOWN} more" if len(rs) > MAX_RANGES_SHOWN else ""
        detail = f"{_size(total)} differ in {len(rs)} range(s): {shown}{more}"
        out.append(Difference("bytes", region, detail))
    if not out:
        out.append(Difference("bytes", "", "same disk contents, compressed differently"))
    return out
