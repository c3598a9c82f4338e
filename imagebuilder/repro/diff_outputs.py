"""``imagebuilder diff A B``: what differs between two outputs, and how.

Root tarballs (tar, tar.gz, tar.xz, tar.bz2, tar.zst) are compared member by member:
content (sha256), type, mode, owner, mtime, xattrs, link target, device numbers,
other pax header fields (atime, ctime...), presence in only one archive, member
order, and finally the bytes of the tar stream and of the compressed file. Raw disk
images (dd, dd.gz, dd.xz...) are compared block by block; differing byte ranges are
named by the partition (GPT or MBR) they fall in, and partition-table fields are
compared (``diskdiff``). Identical files give no :class:`Difference` at all.

This module only reads the two files; it never writes, mounts or prints.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

from ..errors import ConfigError
from .diff_disks import diff_raw
from .diff_read import (
    CHUNK,
    READ_ERRORS,
    Difference,
    compression_of,
    open_decompressed,
    read_full,
    unreadable,
)


def _is_tar(path: Path) -> bool:
    try:
        with open_decompressed(path) as s:
            head = read_full(s, 512)
    except READ_ERRORS as exc:
        raise unreadable(path, exc) from None
    return len(head) == 512 and head[257:262] == b"ustar"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def diff_outputs(a: Path, b: Path) -> list[Difference]:
    """Every difference between outputs ``a`` and ``b``; empty when they are identical."""
    for p in (a, b):
        if not p.is_file():
            raise ConfigError(f"diff: {p} is not a file", hint="give two built outputs")
    if a.stat().st_size == b.stat().st_size and _sha256(a) == _sha256(b):
        return []
    tar_a, tar_b = _is_tar(a), _is_tar(b)
    if tar_a and tar_b:
        return diff_tars(a, b)
    if not tar_a and not tar_b:
        return diff_raw(a, b)
    which = a if tar_a else b
    return [Difference("type", "", f"only {which.name} is a tar archive; the other is a disk")]


# ---- tarballs -------------------------------------------------------------------------


class _HashingReader:
    """A read-only stream that hashes what passes through it (the tar stream)."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner = inner
        self.hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.hash.update(data)
        return data


@dataclass
class Entry:
    """What a tar member says about one path."""

    type: str
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    mtime: float
    size: int
    sha256: str
    link: str
    device: tuple[int, int]
    xattrs: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


_TYPES = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "directory",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "fifo",
}
#: pax fields compared elsewhere (or meaningless to compare on their own).
_KNOWN_PAX = {"path", "linkpath", "size", "mtime", "uid", "gid", "uname", "gname", "hdrcharset"}
_XATTR_PREFIXES = ("SCHILY.xattr.", "LIBARCHIVE.xattr.")


def _norm(name: str) -> str:
    name = name.removeprefix("./").rstrip("/")
    return name or "."


def _entry(tar: tarfile.TarFile, m: tarfile.TarInfo) -> Entry:
    digest = ""
    if m.isreg():
        h = hashlib.sha256()
        f = tar.extractfile(m)
        if f is not None:
            while block := f.read(CHUNK):
                h.update(block)
        digest = h.hexdigest()
    xattrs: dict[str, str] = {}
    headers: dict[str, str] = {}
    for k, v in m.pax_headers.items():
        prefix = next((p for p in _XATTR_PREFIXES if k.startswith(p)), None)
        if prefix is not None:
            xattrs[k[len(prefix) :]] = v
        elif k not in _KNOWN_PAX:
            headers[k] = v
    return Entry(
        type=_TYPES.get(m.type, f"type {m.type!r}"),
        mode=m.mode,
        uid=m.uid,
        gid=m.gid,
        uname=m.uname,
        gname=m.gname,
        mtime=m.mtime,
        size=m.size if m.isreg() else 0,
        sha256=digest,
        link=_norm(m.linkname) if m.islnk() else m.linkname,
        device=(m.devmajor, m.devminor) if m.ischr() or m.isblk() else (0, 0),
        xattrs=xattrs,
        headers=headers,
    )


@dataclass
class TarIndex:
    entries: dict[str, Entry]
    order: list[str]
    stream_sha256: str  # of the uncompressed tar stream
    duplicates: list[str]


def index_tar(path: Path) -> TarIndex:
    """Read a (compressed) tar once: every member's metadata and content digest."""
    entries: dict[str, Entry] = {}
    order: list[str] = []
    dups: list[str] = []
    with open_decompressed(path) as raw:
        reader = _HashingReader(raw)
        try:
            with tarfile.open(fileobj=cast(IO[bytes], reader), mode="r|") as tar:
                for m in tar:
                    name = _norm(m.name)
                    if name in entries:
                        dups.append(name)
                    entries[name] = _entry(tar, m)
                    order.append(name)
            while reader.read(CHUNK):  # the zero blocks after the end marker, to hash them
                pass
        except READ_ERRORS as exc:
            raise unreadable(path, exc) from None
    return TarIndex(entries, order, reader.hash.hexdigest(), dups)


def _when(t: float) -> str:
    stamp = dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    num = f"{t:.9f}".rstrip("0").rstrip(".")
    return f"{num} = {stamp}"


def _short(digest: str) -> str:
    return digest[:12]


def compare_entries(path: str, a: Entry, b: Entry) -> list[Difference]:
    """The differences between two members for the same path."""
    if a.type != b.type:
        return [Difference("type", path, f"{a.type} vs {b.type}")]
    out: list[Difference] = []
    if a.sha256 != b.sha256 or a.size != b.size:
        out.append(
            Difference(
                "content",
                path,
                f"{a.size} bytes sha256 {_short(a.sha256)} vs {b.size} bytes sha256 "
                f"{_short(b.sha256)}",
            )
        )
    if a.link != b.link:
        out.append(Difference("link", path, f"-> {a.link} vs -> {b.link}"))
    if a.device != b.device:
        out.append(Difference("device", path, "{}:{} vs {}:{}".format(*a.device, *b.device)))
    if a.mode != b.mode:
        out.append(Difference("mode", path, f"{a.mode:04o} vs {b.mode:04o}"))
    if (a.uid, a.gid, a.uname, a.gname) != (b.uid, b.gid, b.uname, b.gname):
        out.append(
            Difference(
                "owner",
                path,
                f"{a.uid}:{a.gid} ({a.uname or '-'}:{a.gname or '-'}) vs "
                f"{b.uid}:{b.gid} ({b.uname or '-'}:{b.gname or '-'})",
            )
        )
    if a.mtime != b.mtime:
        out.append(Difference("mtime", path, f"{_when(a.mtime)} vs {_when(b.mtime)}"))
    if a.xattrs != b.xattrs:
        parts = []
        for k in sorted(a.xattrs.keys() | b.xattrs.keys()):
            if k not in b.xattrs:
                parts.append(f"{k} only in A")
            elif k not in a.xattrs:
                parts.append(f"{k} only in B")
            elif a.xattrs[k] != b.xattrs[k]:
                parts.append(f"{k} value differs")
        out.append(Difference("xattrs", path, "; ".join(parts)))
    if a.headers != b.headers:
        parts = [
            f"{k} {a.headers.get(k, 'absent')} vs {b.headers.get(k, 'absent')}"
            for k in sorted(a.headers.keys() | b.headers.keys())
            if a.headers.get(k) != b.headers.get(k)
        ]
        out.append(Difference("header", path, "; ".join(parts)))
    return out


def diff_tars(a: Path, b: Path) -> list[Difference]:
    ia, ib = index_tar(a), index_tar(b)
    out: list[Difference] = []
    for name in sorted(ia.entries.keys() | ib.entries.keys()):
        ea, eb = ia.entries.get(name), ib.entries.get(name)
        if ea is None:
            out.append(Difference("only-in", name, f"only in B ({b.name})"))
        elif eb is None:
            out.append(Difference("only-in", name, f"only in A ({a.name})"))
        else:
            out.extend(compare_entries(name, ea, eb))
    for which, idx in (("A", ia), ("B", ib)):
        for name in sorted(set(idx.duplicates)):
            out.append(Difference("header", name, f"stored more than once in {which}"))
    if not out and ia.order != ib.order:
        first = next(i for i, (x, y) in enumerate(zip(ia.order, ib.order, strict=True)) if x != y)
        out.append(
            Difference(
                "order",
                "",
                f"same members in a different order, first at #{first}: "
                f"{ia.order[first]} vs {ib.order[first]}",
            )
        )
    if not out:
        if ia.stream_sha256 != ib.stream_sha256:
            detail = "same members and metadata, but the tar streams differ (header encoding)"
        else:
            detail = (
                f"identical tar streams, compressed differently ({compression_of(a)} vs "
                f"{compression_of(b)}: level, header or block layout)"
            )
        out.append(Difference("bytes", "", detail))
    return out


def render(diffs: list[Difference]) -> str:
    """The text ``imagebuilder diff`` prints: one line per difference, nothing if none."""
    return "".join(f"{d}\n" for d in diffs)


__all__ = ["Difference", "diff_outputs", "open_decompressed", "render"]
