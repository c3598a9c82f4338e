"""libguestfs' tar stream of a root, re-encoded as ``tarstream.write_tree`` writes the
same tree, so a disk exports to the same bytes whichever way it is read.

GNU tar in the appliance emits members in directory order, write_tree in sorted
(byte) order. :class:`Spool` takes the whole stream first (:meth:`Spool.take`), then
writes its members sorted (:meth:`Spool.write`), applying write_tree's rules where
they depend on the order or on more than the stream says: the first of a set of
hard links *in sorted order* carries the data and the others link to it, overlay
entries take their sorted place (an overlay file hides a directory's members), and
a file is stored sparse when its data has zero blocks (:meth:`Spool.maybe_sparse`
names those, usually a handful) *and* the disk allocated fewer blocks than its size,
which only the caller can ask libguestfs. Modes, owners, mtimes, extended
attributes, symlinks and devices are the stream's.

The data waits in one unnamed file in the caller's work directory, gone when the
spool is closed or the process dies; all-zero chunks become holes in it. Only the
members' headers are held in memory, never their data (copied 1 MiB at a time).
This module does not call libguestfs and writes nothing but its spool and ``out``.
"""

from __future__ import annotations

import heapq
import os
import stat
import tarfile
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import IO, BinaryIO

from ..disk.fsmeta import data_regions
from .tarstream import Meta, Stats, Synthetic, TarWriter, Writable

_READ = 1 << 20


_NO_XATTRS: Mapping[str, bytes] = MappingProxyType({})


@dataclass(slots=True)
class _Member:
    """One member's header (slots, no Meta: a root has hundreds of thousands)."""

    rel: bytes  # "etc/passwd"; b"" for the root
    flag: bytes  # the ustar typeflag it is written with (b"1" a hard link)
    mode: int
    uid: int
    gid: int
    mtime: int  # not yet clamped
    xattrs: Mapping[str, bytes]
    link: bytes = b""  # a symlink's target; for a hard link the rel of the member with the data
    rdev: int = 0
    size: int = 0
    at: int = 0  # where its data starts in the spool
    regions: list[tuple[int, int]] | None = None  # its data regions, when it has zero blocks


def _key(rel: bytes) -> bytes:
    """Sorts paths as write_tree's sorted depth-first walk visits them ("a/b" before "a-c")."""
    return rel.replace(b"/", b"\0")


def _mtime(m: tarfile.TarInfo) -> int:
    """Whole seconds rounded down, as ``st_mtime_ns // 10**9``: a pax mtime with nanoseconds,
    as a float, can round up to the next second."""
    text = m.pax_headers.get("mtime")
    if text is None:
        return int(m.mtime)
    whole, _, frac = text.partition(".")
    return int(whole) - (1 if whole.startswith("-") and frac.strip("0") else 0)


class Spool:
    """The members of one tar stream, their data in an unnamed file under ``work``."""

    def __init__(self, work: Path) -> None:
        self._file = tempfile.TemporaryFile(dir=work)  # noqa: SIM115 - closed by close()
        self._fd = self._file.fileno()
        self._end = 0
        self.members: list[_Member] = []
        self.data_bytes = 0  # file data taken from the stream

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def take(self, src: BinaryIO, *, on_progress: Callable[[int], None] | None = None) -> None:
        """Read the whole GNU tar stream ``src``: headers into memory, data into the spool."""
        with tarfile.open(fileobj=src, mode="r|") as tf:
            for m in tf:
                name = "" if m.name in (".", "./", "/") else m.name.removeprefix("./").strip("/")
                rel = os.fsencode(name)
                head = (m.mode, m.uid, m.gid, _mtime(m))
                xattrs = {
                    k[13:]: v.encode("utf-8", "surrogateescape")
                    for k, v in m.pax_headers.items()
                    if k.startswith("SCHILY.xattr.")
                } or _NO_XATTRS
                link = os.fsencode(m.linkname)
                if m.isdir():
                    self.members.append(_Member(rel, b"5", *head, xattrs))
                elif m.islnk():
                    target = link.removeprefix(b"./").strip(b"/")
                    self.members.append(_Member(rel, b"1", *head, _NO_XATTRS, link=target))
                elif m.issym():
                    self.members.append(_Member(rel, b"2", *head, xattrs, link=link))
                elif m.ischr() or m.isblk():
                    rdev = os.makedev(m.devmajor, m.devminor)
                    flag = b"3" if m.ischr() else b"4"
                    self.members.append(_Member(rel, flag, *head, xattrs, rdev=rdev))
                elif m.isfifo():
                    self.members.append(_Member(rel, b"6", *head, xattrs))
                elif m.isreg():
                    f = tf.extractfile(m)
                    assert f is not None
                    member = _Member(rel, b"0", *head, xattrs, size=m.size, at=self._end)
                    self._copy(f, member, on_progress)
                    self.members.append(member)

    def _copy(
        self, f: IO[bytes], member: _Member, on_progress: Callable[[int], None] | None
    ) -> None:
        pos, left = member.at, member.size
        while left:
            buf = f.read(min(_READ, left))
            if not buf:
                raise OSError(f"tar stream ended inside {os.fsdecode(member.rel)}")
            if buf.count(0) != len(buf):  # zeros stay a hole in the spool
                view = memoryview(buf)
                while view:
                    view = view[os.pwrite(self._fd, view, pos + len(buf) - len(view)) :]
            pos += len(buf)
            left -= len(buf)
            self.data_bytes += len(buf)
            if on_progress is not None:
                on_progress(self.data_bytes)
        if os.fstat(self._fd).st_size < pos:
            os.ftruncate(self._fd, pos)
        self._end = pos
        if member.size:
            regions = data_regions(self._fd, member.size, member.at)
            if regions != [(0, member.size)]:
                member.regions = regions

    def maybe_sparse(self) -> list[bytes]:
        """Files whose data has zero blocks: stored sparse if the disk has holes there."""
        return [m.rel for m in self.members if m.regions is not None]

    def write(
        self,
        out: Writable,
        *,
        epoch: int | None,
        sparse: Collection[bytes] = (),
        overlay: Mapping[str, Synthetic] | None = None,
        emptied: Collection[str] = (),
        on_progress: Callable[[int], None] | None = None,
    ) -> Stats:
        """The members as write_tree writes them; ``sparse``: those of :meth:`maybe_sparse`
        that have fewer blocks allocated than their size. The other arguments are
        write_tree's."""
        tw = TarWriter(out, epoch, on_progress)
        ov = [(os.fsencode(k.strip("/")), v) for k, v in (overlay or {}).items()]
        ov.sort(key=lambda e: _key(e[0]))
        writer = _Writer(tw, self._fd, self.members, sparse, emptied)
        self.members.sort(key=lambda m: _key(m.rel))
        entries: Iterator[tuple[bytes, int, bytes, Synthetic | _Member]] = heapq.merge(
            ((_key(rel), 0, rel, syn) for rel, syn in ov),  # an overlay entry first
            ((_key(m.rel), 1, m.rel, m) for m in self.members),
            key=lambda e: e[:2],
        )
        hidden: bytes | None = None  # members of a directory an overlay file replaces
        replaced: bytes | None = None
        for _, _, rel, item in entries:
            if hidden is not None and rel.startswith(hidden):
                continue
            if isinstance(item, Synthetic):
                tw.synthetic(b"./" + rel, item)
                replaced = rel
                hidden = None if stat.S_ISDIR(item.mode) else rel + b"/"
            elif rel != replaced:
                writer.member(item)
        tw.end()
        return tw.stats


class _Writer:
    """Writes members in sorted order, moving each hard-linked file's data to the first."""

    def __init__(
        self,
        tw: TarWriter,
        fd: int,
        members: list[_Member],
        sparse: Collection[bytes],
        emptied: Collection[str],
    ) -> None:
        self.tw, self.fd, self.sparse = tw, fd, set(sparse)
        self.gone = {os.fsencode(e.strip("/")) for e in emptied}
        targets = {m.link for m in members if m.flag == b"1"}
        self.holders = {m.rel: m for m in members if m.flag != b"1" and m.rel in targets}
        self.first: dict[bytes, bytes] = {}  # holder's rel -> arc of the entry with the data

    def member(self, m: _Member) -> None:
        arc = b"./" + m.rel
        holder = self.holders.get(m.link if m.flag == b"1" else m.rel)
        if (holder is not None and holder.rel in self.first) or (m.flag == b"1" and holder is None):
            # A later link of the inode (or a link to nothing in the stream, as it was).
            target = self.first.get(holder.rel, b"") if holder is not None else b"./" + m.link
            self.tw.emit(arc, self.meta(m), b"1", linkname=target)
            return
        if holder is not None:
            self.first[holder.rel] = arc
            m = holder  # the first link (in sorted order) carries the inode's entry
        self.entry(arc, m)

    def meta(self, m: _Member) -> Meta:
        return Meta(m.mode, m.uid, m.gid, self.tw.clamp(m.mtime))

    def entry(self, arc: bytes, m: _Member) -> None:
        tw = self.tw
        meta = self.meta(m)
        if m.flag == b"5":
            tw.emit(arc.rstrip(b"/") + b"/", meta, b"5", xattrs=m.xattrs)
        elif m.flag == b"2":
            tw.emit(arc, meta, b"2", linkname=m.link, xattrs=m.xattrs)
        elif m.flag in (b"3", b"4"):
            tw.emit(arc, meta, m.flag, rdev=m.rdev, xattrs=m.xattrs)
        elif m.flag == b"6":
            tw.emit(arc, meta, b"6", xattrs=m.xattrs)
        elif arc[2:] in self.gone:
            tw.emit(arc, meta, b"0", xattrs=m.xattrs)
            if m.size:
                tw.stats.emptied.append(os.fsdecode(arc[2:]))
        else:
            sparse = m.regions is not None and m.rel in self.sparse
            regions = m.regions if sparse and m.regions is not None else [(0, m.size)]
            tw.file(arc, meta, m.xattrs, self.fd, m.size, regions, base=m.at)
