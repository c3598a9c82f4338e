"""Parallel, deterministic compression of one byte stream (gzip, xz, bzip2).

The stream is cut into fixed-size chunks at fixed offsets; worker threads
compress chunks (zlib, isal, lzma and bz2 release the GIL) and the results are
written in order to a sink. Output bytes depend only on the input bytes, never on
thread timing, so two runs give identical files.

- gzip: one RFC 1952 member (no name, mtime 0, OS 255). Each chunk is raw deflate
  primed with the previous chunk's last 32 KiB as dictionary and ended with a
  sync flush, pigz-style; a final empty fixed block and the CRC/size trailer close
  the member. The CRC is computed in order by the writer (isal's crc32 runs at
  tens of GB/s). Levels: isal 1 (fast), isal 3 (default), zlib 7 with memLevel 8
  (best: within 0.5% of ``pigz --best`` for a fifth of its CPU time).
- xz / bzip2: each chunk is a complete stream; concatenated streams are what
  ``xz -d``, ``bzip2 -d`` and GNU tar read.
- Runs of zeros (holes of raw disks) reuse one compressed zero chunk.

Memory is bounded: at most ``in_flight`` chunks are queued or being compressed.
This module knows nothing about tar, disks or files; the sink does the writing.
"""

from __future__ import annotations

import bz2
import collections
import concurrent.futures
import lzma
import os
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_isal: Any
try:  # python-isal: fast deflate and crc32; optional at run time
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - isal is a dependency
    _isal = None

Sink = Callable[[bytes], object]
_WINDOW = 32768
_crc32: Callable[[bytes | bytearray | memoryview, int], int] = (
    _isal.crc32 if _isal is not None else zlib.crc32
)


@dataclass(frozen=True)
class Codec:
    """How to compress one chunk, plus what goes before and after the chunks."""

    name: str  # gzip | xz | bzip2
    level: int
    engine: str  # isal | zlib | lzma | bz2
    chunk_size: int
    in_flight: int  # chunks queued or compressing at once (memory bound)
    dict_size: int = 0  # xz: the LZMA2 dictionary

    def header(self) -> bytes:
        if self.name != "gzip":
            return b""
        xfl = 2 if self.engine == "zlib" and self.level >= 7 else (4 if self.level <= 1 else 0)
        return struct.pack("<BBBBIBB", 0x1F, 0x8B, 8, 0, 0, xfl, 255)

    def trailer(self, crc: int, size: int) -> bytes:
        if self.name != "gzip":
            return b""
        # An empty final fixed-Huffman block (BFINAL=1), then CRC32 and ISIZE.
        return b"\x03\x00" + struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)


_local = threading.local()


def compress_chunk(codec: Codec, data: bytes | bytearray, prev: bytes) -> bytes:
    """Compress one chunk; runs in a worker thread. ``prev``: the bytes before it."""
    if codec.engine == "isal":
        assert _isal is not None
        par = getattr(_isal, "_ParallelCompress", None)
        if par is not None:
            comp = getattr(_local, "isal", None)
            if comp is None or _local.isal_key != (codec.level, codec.chunk_size):
                comp = par(buffersize=2 * codec.chunk_size + 1024, level=codec.level)
                _local.isal, _local.isal_key = comp, (codec.level, codec.chunk_size)
            out, _crc = comp.compress_and_crc(data, prev)
            return bytes(out)
        cobj = (
            _isal.compressobj(codec.level, _isal.DEFLATED, -15, 9, 0, prev)
            if prev
            else (_isal.compressobj(codec.level, _isal.DEFLATED, -15))
        )
        return bytes(cobj.compress(data) + cobj.flush(_isal.Z_SYNC_FLUSH))
    if codec.engine == "zlib":
        z = (
            zlib.compressobj(codec.level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, prev)
            if prev
            else zlib.compressobj(codec.level, zlib.DEFLATED, -15, 8)
        )
        return z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)
    if codec.engine == "lzma":
        return lzma.compress(
            data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=codec.level
        )
    return bz2.compress(data, codec.level)


def gzip_codec(effort: str) -> Codec:
    """gzip at ``fast``/``default``/``best`` (see the module docstring for the numbers)."""
    if effort == "best" or _isal is None:
        level = {"fast": 1, "default": 6, "best": 7}[effort]
        return Codec("gzip", level, "zlib", 1 << 20, 8)
    return Codec("gzip", 1 if effort == "fast" else 3, "isal", 1 << 20, 8)


def xz_codec(effort: str) -> Codec:
    # Chunks are independent xz streams of 2-3x the dictionary (xz -T cuts blocks of
    # 3x). A dictionary of at most 4 MiB keeps preset 6's encoder near 55 MiB, so two
    # encoders and their chunks stay well under the 300 MB RSS budget.
    preset, dict_mib = {"fast": (1, 1), "default": (3, 4), "best": (6, 4)}[effort]
    return Codec("xz", preset, "lzma", max(3, 2 * dict_mib) << 20, 2, dict_mib << 20)


def bzip2_codec(effort: str) -> Codec:
    return Codec("bzip2", 1 if effort == "fast" else 9, "bz2", 8 << 20, 4)


class Compressor:
    """A file-like writer: ``write``/``write_zeros`` bytes in, compressed bytes to ``sink``.

    Call :meth:`close` to finish the stream (it writes the trailer) or
    :meth:`abort` to drop pending work; use it as a context manager for that.
    """

    def __init__(self, sink: Sink, codec: Codec, *, threads: int | None = None) -> None:
        self.codec = codec
        self._sink = sink
        self._buf = bytearray()
        self._prev = b""  # last 32 KiB of the stream before self._buf (gzip dictionary)
        self._crc = 0
        self.size = 0  # uncompressed bytes consumed
        self._pending: collections.deque[concurrent.futures.Future[bytes] | bytes] = (
            collections.deque()
        )
        self._zero_chunk: bytes | None = None
        threads = threads or os.cpu_count() or 1
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="compress")
        sink(codec.header())

    def __enter__(self) -> Compressor:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # ---- input ---------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        cs = self.codec.chunk_size
        view = memoryview(data)
        while view:
            take = min(len(view), cs - len(self._buf))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == cs:
                self._submit()
        return n

    def write_zeros(self, n: int) -> None:
        """Append ``n`` zero bytes cheaply: whole zero chunks reuse one compressed copy."""
        cs = self.codec.chunk_size
        if self._buf:
            k = min(n, cs - len(self._buf))
            self._buf += bytes(k)
            n -= k
            if len(self._buf) == cs:
                self._submit()
        while n >= cs:
            if self._prev_is_zero() or self.codec.name != "gzip":
                self._emit_zero_chunk()
            else:
                self._buf += bytes(cs)
                self._submit()
            n -= cs
        if n:
            self._buf += bytes(n)

    # ---- chunks ----------------------------------------------------------------
    def _prev_is_zero(self) -> bool:
        return len(self._prev) == _WINDOW and self._prev.count(0) == _WINDOW

    def _emit_zero_chunk(self) -> None:
        cs = self.codec.chunk_size
        zeros = bytes(cs)
        if self._zero_chunk is None:
            prev = zeros[-_WINDOW:] if self.codec.name == "gzip" else b""
            self._zero_chunk = compress_chunk(self.codec, zeros, prev)
        if self.codec.name == "gzip":
            self._crc = _crc32(zeros, self._crc)
        self._prev = zeros[-_WINDOW:]
        self.size += cs
        self._queue(self._zero_chunk)

    def _submit(self) -> None:
        data, self._buf = self._buf, bytearray()  # handed over, not copied
        if self.codec.name == "gzip":
            self._crc = _crc32(data, self._crc)
        prev = self._prev if self.codec.name == "gzip" else b""
        self._prev = bytes(
            (self._prev + data)[-_WINDOW:] if len(data) < _WINDOW else data[-_WINDOW:]
        )
        self.size += len(data)
        self._queue(self._pool.submit(compress_chunk, self.codec, data, prev))

    def _queue(self, item: concurrent.futures.Future[bytes] | bytes) -> None:
        self._pending.append(item)
        while len(self._pending) >= self.codec.in_flight:
            self._drain_one()

    def _drain_one(self) -> None:
        item = self._pending.popleft()
        self._sink(item if isinstance(item, bytes) else item.result())

    # ---- end -------------------------------------------------------------------
    def close(self) -> None:
        """Compress what is left, write it all in order, then the trailer."""
        if self._buf:
            self._submit()
        while self._pending:
            self._drain_one()
        self._pool.shutdown(wait=True)
        self._sink(self.codec.trailer(self._crc, self.size))

    def abort(self) -> None:
        """Drop queued chunks without writing them (the output is being discarded)."""
        for item in self._pending:
            if not isinstance(item, bytes):
                item.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
