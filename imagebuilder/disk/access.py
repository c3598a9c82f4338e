"""Serve a finished disk image read-only, in user space.

:func:`probe` asks ``qemu-img`` for an image's format and size; :func:`serve` runs
``qemu-storage-daemon`` on it (any format qemu reads: qcow2 with its backing chain,
raw, vmdk, vhdx): an NBD export on a unix socket, read with libnbd through
:class:`Server` (partition table, raw streaming with block status), and optionally
a FUSE export, a plain file showing the raw disk, which ``root_mount`` mounts.
This module mounts nothing and never writes to the image it reads; a writable
export is for throwaway overlays only (:mod:`imagebuilder.export.overlay`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DiskError, host_package_hint
from ..run import run, spawn
from . import parttable
from .parttable import Layout


@dataclass(frozen=True)
class DiskInfo:
    path: Path
    format: str  # qemu format name
    virtual_size: int
    backing: str | None = None


def probe(path: Path) -> DiskInfo:
    """Format and size of a disk image, as qemu sees it."""
    if not path.exists():
        raise DiskError(f"disk image {path} does not exist", hint="check the path")
    out = run(
        ["qemu-img", "info", "--output=json", path],
        hint="is the file a disk image qemu can read (qcow2, raw, vmdk, vhdx)?",
    ).stdout
    info: dict[str, Any] = json.loads(out)
    return DiskInfo(
        path.resolve(),
        str(info["format"]),
        int(info["virtual-size"]),
        info.get("full-backing-filename") or info.get("backing-filename"),
    )


class Server:
    """A running qemu-storage-daemon: NBD socket, optional FUSE file, libnbd reads."""

    def __init__(self, info: DiskInfo, socket: Path, fuse_file: Path | None) -> None:
        self.info = info
        self.socket = socket
        self.fuse_file = fuse_file
        self._nbd: Any = None

    def handle(self) -> Any:
        """A connected libnbd handle with base:allocation (shared, closed with the server)."""
        if self._nbd is None:
            try:
                import nbd
            except ImportError as exc:
                raise DiskError(
                    "the libnbd Python binding (module nbd) is missing",
                    hint=host_package_hint("python3-libnbd")
                    + ", and use a venv made with --system-site-packages",
                ) from exc
            h = nbd.NBD()
            h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
            h.set_export_name("disk")
            h.connect_unix(os.fspath(self.socket))
            self._nbd = h
        return self._nbd

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.handle().pread(length, offset))

    def extents(self) -> Iterator[tuple[int, int, bool]]:
        """(offset, length, is_zero) covering the disk, from NBD base:allocation."""
        import nbd

        h = self.handle()
        size = self.info.virtual_size
        supported = bool(h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION))
        found: list[tuple[int, bool]] = []

        def collect(ctx: str, off: int, entries: list[int], err: int) -> int:
            if ctx == nbd.CONTEXT_BASE_ALLOCATION:
                for i in range(0, len(entries) - 1, 2):
                    found.append((entries[i], bool(entries[i + 1] & nbd.STATE_ZERO)))
            return 0

        offset = 0
        while offset < size:
            want = min(size - offset, 1 << 30)
            found.clear()
            if supported:
                h.block_status(want, offset, collect)
            for length, zero in list(found) or [(want, False)]:
                length = min(length, size - offset)
                if length <= 0:
                    break
                yield offset, length, zero
                offset += length

    def layout(self) -> Layout:
        return parttable.read_layout(self.read, self.info.virtual_size)

    def close(self) -> None:
        if self._nbd is not None:
            with contextlib.suppress(Exception):
                self._nbd.shutdown()
            self._nbd = None  # libnbd closes the handle when it is collected


@contextlib.contextmanager
def serve(
    info: DiskInfo,
    workdir: Path,
    *,
    writable: bool = False,
    fuse: bool = False,
    nbd: bool = True,
    name: str = "disk",
) -> Iterator[Server]:
    """Serve ``info.path`` until the block exits.

    ``writable`` is for throwaway overlays only, and then with ``nbd=False``: qemu
    does not let a writable FUSE export share its node with an NBD export.
    """
    fuse_file = workdir / f"{name}.raw" if fuse else None
    ro = not writable
    node = {
        "driver": info.format,
        "node-name": "disk",
        "read-only": ro,
        "file": {"driver": "file", "filename": os.fspath(info.path), "read-only": ro},
    }
    argv: list[str] = ["qemu-storage-daemon", "--blockdev", json.dumps(node)]
    # A unix socket path must fit in 108 bytes: keep it out of a deep work dir.
    sockdir = Path(
        tempfile.mkdtemp(prefix="ib-", dir=None if len(tempfile.gettempdir()) < 60 else "/tmp")
    )
    sock = sockdir / f"{name}.sock"
    if nbd:
        argv += [
            "--nbd-server",
            json.dumps({"addr": {"type": "unix", "path": os.fspath(sock)}}),
            "--export",
            json.dumps({"type": "nbd", "id": "nbd0", "node-name": "disk", "name": "disk"}),
        ]
    if fuse_file is not None:
        fuse_file.touch()
        export = {
            "type": "fuse",
            "id": "fuse0",
            "node-name": "disk",
            "mountpoint": os.fspath(fuse_file),
            "writable": writable,
        }
        argv += ["--export", json.dumps(export)]
    try:
        with spawn(argv) as proc:
            _wait_ready(proc, sock if nbd else None, fuse_file)
            server = Server(info, sock, fuse_file)
            try:
                yield server
            finally:
                server.close()
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def _wait_ready(proc: subprocess.Popen[bytes], sock: Path | None, fuse_file: Path | None) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise DiskError(
                f"qemu-storage-daemon could not serve the disk: {err.strip()}",
                hint="is the image in use by a running VM, or unreadable?",
            )
        fuse_ok = fuse_file is None or os.stat(fuse_file).st_dev != os.stat(fuse_file.parent).st_dev
        if (sock is None or sock.exists()) and fuse_ok:
            return
        time.sleep(0.02)
    raise DiskError("qemu-storage-daemon did not start within 30 s", hint="check the disk image")
