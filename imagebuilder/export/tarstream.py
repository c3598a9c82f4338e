"""A reproducible pax tar stream of a directory tree, as GNU tar extracts it.

:func:`write_tree` walks a mounted root filesystem in sorted (byte) order and
writes ustar headers with pax extended headers where needed: long names and
link targets, big sizes and ids, extended attributes as ``SCHILY.xattr.*`` (raw
bytes, so ``security.capability``, ``security.selinux`` and the
``system.posix_acl_*`` ACLs all survive curtin's
``tar --xattrs --xattrs-include=* -Sxpf - --numeric-owner``, which has no
``--acls``), ACLs also as ``SCHILY.acl.*`` text for ``tar --acls``, and sparse
files in GNU's pax format 1.0. Owners are numeric (no user or group names),
entries are ``./...``, mtimes are whole seconds clamped to SOURCE_DATE_EPOCH,
hard links are kept, sockets are skipped (as GNU tar does). Extra entries
(``/curtin``, an emptied machine-id) are merged in from an overlay.

It only reads the tree; it never opens a file for writing.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ..disk.fsmeta import acl_text, data_regions, read_xattrs

BLOCK = 512
RECORD = 10240
_READ = 1 << 20


class Writable(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...


@dataclass(frozen=True)
class Synthetic:
    """An entry that is not read from the disk: a directory or a regular file."""

    mode: int  # st_mode, type bits included (stat.S_IFDIR | 0o755, ...)
    uid: int = 0
    gid: int = 0
    data: bytes = b""
    mtime: int | None = None  # None: the clamp epoch (or 0 without one)
    xattrs: Mapping[str, bytes] = field(default_factory=dict)


@dataclass
class Stats:
    entries: int = 0
    bytes: int = 0  # file data bytes read
    emptied: list[str] = field(default_factory=list)  # files whose content was dropped


def _octal(value: int, width: int) -> bytes:
    return f"{value:0{width - 1}o}".encode() + b"\0"


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode() + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def _header(
    name: bytes, meta: Meta, typeflag: bytes, *, size: int = 0, linkname: bytes = b"", rdev: int = 0
) -> bytes:
    hdr = bytearray(BLOCK)
    hdr[0:100] = name[:100].ljust(100, b"\0")
    hdr[100:108] = _octal(meta.mode & 0o7777, 8)
    hdr[108:116] = _octal(meta.uid if meta.uid < 0o7777777 else 0, 8)
    hdr[116:124] = _octal(meta.gid if meta.gid < 0o7777777 else 0, 8)
    hdr[124:136] = _octal(size if size < 0o77777777777 else 0, 12)
    hdr[136:148] = _octal(max(0, min(meta.mtime, 0o77777777777)), 12)
    hdr[148:156] = b" " * 8
    hdr[156:157] = typeflag
    hdr[157:257] = linkname[:100].ljust(100, b"\0")
    hdr[257:265] = b"ustar\x0000"
    hdr[329:337] = _octal(os.major(rdev), 8)
    hdr[337:345] = _octal(os.minor(rdev), 8)
    hdr[148:156] = f"{sum(hdr):06o}".encode() + b"\0 "
    return bytes(hdr)


def _pad(n: int) -> bytes:
    return bytes(-n % BLOCK)


@dataclass(frozen=True)
class Meta:
    mode: int  # st_mode (type bits ignored: the typeflag says the type)
    uid: int
    gid: int
    mtime: int  # already clamped


class TarWriter:
    """Formats entries (pax extended header + ustar header + data) onto ``out``."""

    def __init__(
        self, out: Writable, epoch: int | None, on_progress: Callable[[int], None] | None = None
    ) -> None:
        self._out = out
        self.written = 0
        self.epoch = epoch
        self.on_progress = on_progress
        self.stats = Stats()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._out.write(data)
        self.written += len(data)

    def data(self, chunk: bytes) -> None:
        """File contents (counted for progress)."""
        self.write(chunk)
        self.stats.bytes += len(chunk)
        if self.on_progress is not None:
            self.on_progress(self.stats.bytes)

    def clamp(self, mtime: int) -> int:
        return mtime if self.epoch is None else min(mtime, self.epoch)

    def emit(
        self,
        arcname: bytes,
        meta: Meta,
        typeflag: bytes,
        *,
        size: int = 0,
        linkname: bytes = b"",
        rdev: int = 0,
        xattrs: Mapping[str, bytes] | None = None,
        sparse_size: int | None = None,
    ) -> None:
        """One header (and its pax header); the caller writes ``size`` bytes and padding."""
        records: list[bytes] = []
        name = arcname
        if sparse_size is not None:
            head, _, tail = arcname.rpartition(b"/")
            name = head + b"/GNUSparseFile.0/" + tail
            records += [
                _pax_record("GNU.sparse.major", b"1"),
                _pax_record("GNU.sparse.minor", b"0"),
                _pax_record("GNU.sparse.name", arcname),
                _pax_record("GNU.sparse.realsize", str(sparse_size).encode()),
            ]
        elif len(arcname) > 100:
            records.append(_pax_record("path", arcname))
        if len(linkname) > 100:
            records.append(_pax_record("linkpath", linkname))
        for key, num in (("size", size), ("uid", meta.uid), ("gid", meta.gid)):
            if num >= (0o77777777777 if key == "size" else 0o7777777):
                records.append(_pax_record(key, str(num).encode()))
        for key, value in sorted((xattrs or {}).items()):
            if key in ("system.posix_acl_access", "system.posix_acl_default"):
                text = acl_text(value)
                if text is not None:
                    records.append(_pax_record(f"SCHILY.acl.{key[17:]}", text))
            records.append(_pax_record(f"SCHILY.xattr.{key}", value))
        if not (_utf8(arcname) and _utf8(linkname)):
            records.insert(0, _pax_record("hdrcharset", b"BINARY"))
        if records:
            body = b"".join(records)
            self.write(_header(b"././@PaxHeader", Meta(0o644, 0, 0, 0), b"x", size=len(body)))
            self.write(body + _pad(len(body)))
        self.write(_header(name, meta, typeflag, size=size, linkname=linkname, rdev=rdev))
        self.stats.entries += 1

    def file(
        self,
        arc: bytes,
        meta: Meta,
        xattrs: Mapping[str, bytes],
        fd: int,
        size: int,
        regions: list[tuple[int, int]],
        base: int = 0,
    ) -> None:
        """A regular file of ``size`` bytes read from ``fd`` at ``base``: sparse (GNU pax
        1.0) unless ``regions`` (its data, from :func:`data_regions`) is all of it."""
        if regions != [(0, size)]:  # sparse: the map, then the data regions
            if not regions or regions[-1][0] + regions[-1][1] < size:
                regions = [*regions, (size, 0)]
            smap = f"{len(regions)}\n".encode() + b"".join(
                f"{o}\n{n}\n".encode() for o, n in regions
            )
            smap += _pad(len(smap))
            data_len = sum(n for _, n in regions)
            self.emit(arc, meta, b"0", size=len(smap) + data_len, xattrs=xattrs, sparse_size=size)
            self.write(smap)
        else:
            data_len = size
            self.emit(arc, meta, b"0", size=size, xattrs=xattrs)
        for off, n in regions:
            end = off + n
            while off < end:
                buf = os.pread(fd, min(_READ, end - off), base + off)
                if not buf:
                    raise OSError(f"{arc.decode(errors='replace')} shrank while read")
                self.data(buf)
                off += len(buf)
        self.write(_pad(data_len))

    def synthetic(self, arc: bytes, syn: Synthetic) -> None:
        mtime = syn.mtime if syn.mtime is not None else (self.epoch or 0)
        meta = Meta(syn.mode, syn.uid, syn.gid, self.clamp(mtime))
        if stat.S_ISDIR(syn.mode):
            self.emit(arc.rstrip(b"/") + b"/", meta, b"5", xattrs=syn.xattrs)
            return
        self.emit(arc, meta, b"0", size=len(syn.data), xattrs=syn.xattrs)
        self.write(syn.data + _pad(len(syn.data)))

    def end(self) -> None:
        """Two zero blocks end the archive; pad to GNU tar's 10 KiB record as it does."""
        end = 2 * BLOCK
        self.write(bytes(end + (-(self.written + end) % RECORD)))


class _Walker:
    def __init__(
        self,
        tw: TarWriter,
        overlay: Mapping[bytes, Synthetic],
        mounts: Mapping[bytes, bytes],
        emptied: Collection[bytes],
    ) -> None:
        self.tw = tw
        self.overlay = overlay
        self.mounts = mounts
        self.emptied = emptied
        self.links: dict[tuple[int, int], bytes] = {}
        # Children of each overlay directory, so synthetic paths appear in listings.
        self.children: dict[bytes, set[bytes]] = {}
        for rel in overlay:
            parent, _, base = rel.rpartition(b"/")
            self.children.setdefault(parent, set()).add(base)

    def regular(
        self, arc: bytes, path: bytes, st: os.stat_result, meta: Meta, xattrs: dict[str, bytes]
    ) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            size = st.st_size
            regions = data_regions(fd, size) if st.st_blocks * 512 < size else [(0, size)]
            self.tw.file(arc, meta, xattrs, fd, size, regions)
        finally:
            os.close(fd)

    def entry(self, rel: bytes, path: bytes | None) -> None:
        """Emit ``./rel`` (from ``path`` or the overlay) and, for a directory, its tree."""
        arc = b"./" + rel if rel else b"./"
        syn = self.overlay.get(rel)
        st = os.lstat(path) if path is not None else None
        if syn is not None:
            self.tw.synthetic(arc, syn)
            if stat.S_ISDIR(syn.mode):
                on_disk = st is not None and stat.S_ISDIR(st.st_mode)
                self.directory(rel, path if on_disk else None)
            return
        assert path is not None and st is not None
        mode = st.st_mode
        meta = Meta(mode, st.st_uid, st.st_gid, self.tw.clamp(st.st_mtime_ns // 1_000_000_000))
        if stat.S_ISDIR(mode):
            self.tw.emit(arc.rstrip(b"/") + b"/", meta, b"5", xattrs=read_xattrs(path))
            self.directory(rel, self.mounts.get(rel, path))
            return
        if stat.S_ISSOCK(mode):
            return
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self.links.get(key)
            if first is not None:
                self.tw.emit(arc, meta, b"1", linkname=first)
                return
            self.links[key] = arc
        xattrs = read_xattrs(path)
        if stat.S_ISREG(mode) and rel in self.emptied:
            self.tw.emit(arc, meta, b"0", xattrs=xattrs)
            if st.st_size:
                self.tw.stats.emptied.append(os.fsdecode(rel))
        elif stat.S_ISREG(mode):
            self.regular(arc, path, st, meta, xattrs)
        elif stat.S_ISLNK(mode):
            self.tw.emit(arc, meta, b"2", linkname=os.readlink(path), xattrs=xattrs)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            flag = b"3" if stat.S_ISCHR(mode) else b"4"
            self.tw.emit(arc, meta, flag, rdev=st.st_rdev, xattrs=xattrs)
        elif stat.S_ISFIFO(mode):
            self.tw.emit(arc, meta, b"6", xattrs=xattrs)

    def directory(self, rel: bytes, path: bytes | None) -> None:
        on_disk = set(os.listdir(path)) if path is not None else set()
        for name in sorted(on_disk | self.children.get(rel, set())):
            child = rel + b"/" + name if rel else name
            self.entry(child, path + b"/" + name if path is not None and name in on_disk else None)


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def write_tree(
    out: Writable,
    root: os.PathLike[str] | str,
    *,
    epoch: int | None,
    overlay: Mapping[str, Synthetic] | None = None,
    mounts: Mapping[str, os.PathLike[str] | str] | None = None,
    emptied: Collection[str] = (),
    on_progress: Callable[[int], None] | None = None,
) -> Stats:
    """Write the tree at ``root`` as a tar stream to ``out`` and return counts.

    ``overlay`` maps relative paths ("curtin/curtin-hooks") to entries that replace
    or add to what is on disk; ``mounts`` maps a relative directory ("boot") to
    another directory whose contents are listed there instead (an XBOOTLDR
    partition mounted elsewhere); regular files in ``emptied`` ("etc/machine-id")
    keep their metadata but lose their content. ``epoch`` clamps mtimes; None
    keeps them.
    """
    tw = TarWriter(out, epoch, on_progress)
    ov = {os.fsencode(k.strip("/")): v for k, v in (overlay or {}).items()}
    mt = {os.fsencode(k.strip("/")): os.fsencode(v) for k, v in (mounts or {}).items()}
    _Walker(tw, ov, mt, {os.fsencode(e.strip("/")) for e in emptied}).entry(b"", os.fsencode(root))
    tw.end()
    return tw.stats
