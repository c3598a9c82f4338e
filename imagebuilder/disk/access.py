"""Read a finished disk image without ever writing to it.

``qemu-storage-daemon`` serves the image (any format qemu reads: qcow2 with its
backing chain, raw, vmdk, vhdx) read-only in user space: an NBD export on a unix
socket, read with libnbd (partition table, raw streaming with block status), and
optionally a FUSE export, a plain file showing the raw disk. The root filesystem is
then reached by one of three backends, always read-only:

- ``loop``: ``losetup -r -o OFFSET --sizelimit SIZE`` on the FUSE file and a
  kernel ``mount -o ro,noload`` (needs root; the fastest);
- ``fuse``: ``fuse2fs -o ro,fakeroot,offset=OFFSET`` on the FUSE file (rootless, ext*);
- ``guestfs``: libguestfs reads the disk in its own appliance (LVM, xfs, btrfs;
  see :mod:`imagebuilder.disk.guestfs`); nothing is mounted on the host.

``auto`` picks loop as root and fuse otherwise for ext2/3/4, guestfs for anything
else, and loop for xfs/btrfs (as root) where libguestfs cannot run. This module
never writes to the image it reads; writes to throwaway overlays live in
:mod:`imagebuilder.disk.guestfs` and :mod:`imagebuilder.export`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.tree import DiskBackend
from ..errors import DiskError, ToolNotFoundError, host_package_hint
from ..run import run, spawn, which
from . import parttable
from .parttable import Layout, Partition

EXT = ("ext2", "ext3", "ext4")
LOOP_FS = ("xfs", "btrfs")  # besides ext*, what a loop mount reads for the auto backend
#: The fix where libguestfs has no kernel to build its appliance from.
GUESTFS_KERNEL_FIX = "give libguestfs a kernel to build its appliance from: " + host_package_hint(
    "linux-image-amd64"
)


@dataclass(frozen=True)
class DiskInfo:
    path: Path
    format: str  # qemu format name
    virtual_size: int
    backing: str | None = None


@dataclass(frozen=True)
class RootView:
    """A mounted root filesystem; ``boot`` is the XBOOTLDR partition mounted apart, if any."""

    root: Path
    boot: Path | None
    backend: DiskBackend


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


def _open_in_root(root: Path, rel: str, flags: int) -> int:
    """Open ``root/rel`` without following any symlink (the image's links point into the
    host's filesystem, not the image's)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        parts = [p for p in rel.split("/") if p]
        for part in parts[:-1]:
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return os.open(parts[-1], flags | os.O_NOFOLLOW, dir_fd=fd)
    finally:
        os.close(fd)


def read_in_root(root: Path, rel: str) -> bytes | None:
    """The content of regular file ``rel`` of a mounted image, None if it is not one."""
    try:
        fd = _open_in_root(root, rel, os.O_RDONLY)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read() if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else None


def listdir_in_root(root: Path, rel: str) -> list[str] | None:
    """Names in directory ``rel`` of a mounted image, None if it is not a directory."""
    try:
        fd = _open_in_root(root, rel, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def is_root() -> bool:
    return os.geteuid() == 0 and Path("/dev/loop-control").exists()


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


def choose_backend(
    requested: DiskBackend, root: Partition, *, guestfs_missing: str | None = None
) -> DiskBackend:
    """The backend for ``root``: as requested, or the fastest that can read it.

    ``guestfs_missing`` is why libguestfs cannot run here (None: it can); ``auto``
    then reads an xfs or btrfs root with a loop mount as root, and otherwise names the
    cause and the fix.
    """
    ext = root.fstype in EXT
    if requested is DiskBackend.AUTO:
        if ext:
            return DiskBackend.LOOP if is_root() else DiskBackend.FUSE
        if guestfs_missing is None:
            return DiskBackend.GUESTFS
        kind = "an LVM" if root.fstype == "LVM2_member" else f"a {root.fstype or 'unknown'}"
        if root.fstype in LOOP_FS and is_root():
            return DiskBackend.LOOP
        fix = GUESTFS_KERNEL_FIX
        if root.fstype in LOOP_FS:
            fix += ", or run as root to read it with a loop mount"
        raise DiskError(f"cannot read {kind} root filesystem: {guestfs_missing}", hint=fix)
    if requested is DiskBackend.FUSE and not ext:
        raise DiskError(
            f"fuse2fs cannot read a {root.fstype or 'unknown'} root filesystem",
            hint="use --disk-backend guestfs",
        )
    if requested is DiskBackend.LOOP:
        if not is_root():
            raise DiskError(
                "--disk-backend loop needs root and loop devices",
                hint="run as root, or use --disk-backend fuse",
            )
        if root.fstype not in (*EXT, *LOOP_FS):
            raise DiskError(
                f"a loop mount cannot read a {root.fstype or 'unknown'} root",
                hint="use --disk-backend guestfs",
            )
    return requested


def find_root(layout: Layout) -> Partition:
    root = parttable.pick_root(layout)
    if root is None:
        found = ", ".join(f"{p.number}:{p.fstype or '?'}" for p in layout.partitions) or "none"
        raise DiskError(
            f"no Linux root filesystem found on the disk (partitions: {found})",
            hint="is this a bootable Linux disk image?",
        )
    return root


@contextlib.contextmanager
def mount_root(
    server: Server, layout: Layout, backend: DiskBackend, workdir: Path
) -> Iterator[RootView]:
    """Mount the root (and XBOOTLDR /boot) read-only with ``backend`` until the block exits."""
    root = find_root(layout)
    if backend is DiskBackend.GUESTFS:
        raise DiskError("internal: libguestfs disks are streamed, not mounted on the host")
    if root.fstype == "LVM2_member":
        raise DiskError("the root filesystem is on LVM", hint="use --disk-backend guestfs")
    with contextlib.ExitStack() as stack:
        rdir = stack.enter_context(_mount_one(server, root, backend, workdir / "root"))
        fstab = rdir / "etc/fstab"
        boot = parttable.pick_boot(
            layout, fstab.read_text(errors="replace") if fstab.is_file() else ""
        )
        bdir = None
        if boot is not None and boot != root:
            bdir = stack.enter_context(_mount_one(server, boot, backend, workdir / "boot"))
        yield RootView(rdir, bdir, backend)


@contextlib.contextmanager
def _mount_one(server: Server, part: Partition, backend: DiskBackend, mnt: Path) -> Iterator[Path]:
    if server.fuse_file is None:
        raise DiskError("internal: mount needs a server started with fuse=True")
    mnt.mkdir(exist_ok=True)
    if backend is DiskBackend.LOOP:
        dev = (
            run(
                [
                    "losetup",
                    "--read-only",
                    "--offset",
                    str(part.start),
                    "--sizelimit",
                    str(part.size),
                    "--find",
                    "--show",
                    server.fuse_file,
                ]
            )
            .stdout.decode()
            .strip()
        )
        try:
            opts = {"xfs": "ro,norecovery", "btrfs": "ro,norecovery"}.get(part.fstype, "ro,noload")
            fstype = part.fstype if part.fstype in ("xfs", "btrfs") else "ext4"
            run(["mount", "-t", fstype, "-o", opts, dev, mnt])
            try:
                yield mnt
            finally:
                run(["umount", mnt], check=False)
        finally:
            run(["losetup", "-d", dev], check=False)
        return
    if part.fstype not in EXT:
        raise DiskError(
            f"fuse2fs cannot read a {part.fstype or 'unknown'} filesystem "
            f"(partition {part.number})",
            hint="use --disk-backend guestfs",
        )
    argv = [
        "fuse2fs",
        "-f",
        os.fspath(server.fuse_file),
        os.fspath(mnt),
        "-o",
        f"ro,fakeroot,offset={part.start}",
    ]
    with spawn(argv) as proc:
        deadline = time.monotonic() + 30
        while os.stat(mnt).st_dev == os.stat(mnt.parent).st_dev:
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise DiskError(
                    f"fuse2fs could not mount partition {part.number}: {err.strip()}",
                    hint="try --disk-backend guestfs",
                )
            time.sleep(0.02)
        try:
            yield mnt
        finally:
            _fuse_unmount(mnt)


def _fuse_unmount(mnt: Path) -> None:
    for tool in ("fusermount3", "fusermount"):
        try:
            if run([which(tool), "-u", mnt], check=False).returncode == 0:
                return
        except ToolNotFoundError:
            continue
    run(["umount", mnt], check=False)
