"""What a file is besides its bytes, read the way a reproducible tar needs it.

Extended attributes (raw, without following symlinks), POSIX ACL xattrs rendered
as ``getfacl -n`` text, and the data regions of sparse files at a fixed
granularity, so the result depends on the content only, not on how the filesystem
is mounted (loop, fuse2fs). :mod:`imagebuilder.export.tarstream` writes what this module
reads; this module reads only and never opens a file for writing.
"""

from __future__ import annotations

import errno
import os
import struct

__all__ = ["acl_text", "data_regions", "read_xattrs"]

_READ = 1 << 20
_SCAN = 4096  # granularity of hole detection in sparse files


_ACL_TAGS = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask", 0x20: "other"}


def acl_text(raw: bytes) -> bytes | None:
    """Render a ``system.posix_acl_*`` xattr value as ``getfacl -n`` text (GNU tar's form)."""
    if len(raw) < 4 or (len(raw) - 4) % 8 or struct.unpack_from("<I", raw)[0] != 2:
        return None
    lines = []
    for off in range(4, len(raw), 8):
        tag, perm, ident = struct.unpack_from("<HHI", raw, off)
        if tag not in _ACL_TAGS:
            return None
        who = str(ident) if tag in (0x02, 0x08) else ""
        rwx = "".join(c if perm & b else "-" for c, b in (("r", 4), ("w", 2), ("x", 1)))
        lines.append(f"{_ACL_TAGS[tag]}:{who}:{rwx}\n")
    return "".join(lines).encode()


def read_xattrs(path: bytes) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # ENOTSUP and friends: no xattrs here
        return {}
    out = {}
    for name in names:
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


def data_regions(fd: int, size: int, base: int = 0) -> list[tuple[int, int]]:
    """(offset, length) of the non-zero _SCAN-aligned blocks of a sparse file.

    The map depends on the content only, not on how the filesystem is read (a
    loop mount reports holes at the filesystem's block size, fuse2fs reports
    none): SEEK_DATA/SEEK_HOLE only say which aligned blocks need reading at all.
    ``base`` is where the file's first byte is in ``fd`` (a spool of many files);
    offsets and alignment are relative to it.
    """
    extents: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            start = os.lseek(fd, base + pos, os.SEEK_DATA) - base
            if start >= size:
                break
            pos = min(os.lseek(fd, base + start, os.SEEK_HOLE) - base, size)
            a, b = start - start % _SCAN, min(size, -(-pos // _SCAN) * _SCAN)
            if extents and extents[-1][1] >= a:
                extents[-1] = (extents[-1][0], b)
            else:
                extents.append((a, b))
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # no SEEK_DATA here: scan the whole file
            extents = [(0, size)]
    zero = bytes(_SCAN)
    regions: list[tuple[int, int]] = []
    for start, end in extents:
        pos = start
        while pos < end:
            buf = os.pread(fd, min(_READ, end - pos), base + pos)
            if not buf:
                break
            if buf.count(0) != len(buf):
                for off in range(0, len(buf), _SCAN):
                    blk = buf[off : off + _SCAN]
                    if blk != zero[: len(blk)]:
                        a = pos + off
                        if regions and regions[-1][0] + regions[-1][1] == a:
                            regions[-1] = (regions[-1][0], regions[-1][1] + len(blk))
                        else:
                            regions.append((a, len(blk)))
            pos += len(buf)
    return regions
