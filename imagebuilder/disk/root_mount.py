"""The root filesystem of a served disk, found and mounted read-only on the host.

:func:`find_root` picks the Linux root partition of a layout; :func:`mount_root`
mounts it, and an XBOOTLDR ``/boot`` partition apart from it, until the block exits:
with ``loop``, ``losetup -r -o OFFSET --sizelimit SIZE`` on the FUSE file and a
kernel ``mount -o ro,noload`` (needs root), or with ``fuse``, ``fuse2fs -o
ro,fakeroot,offset=OFFSET`` (rootless, ext*). Every mount is read-only and undone
on the way out. This module does not choose the backend (``backends``) or
serve the disk (``access``); libguestfs disks are streamed, never mounted here.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..config.tree import DiskBackend
from ..errors import DiskError, ToolNotFoundError
from ..run import run, spawn, which
from . import parttable
from .access import Server
from .backends import EXT
from .parttable import Layout, Partition


@dataclass(frozen=True)
class RootView:
    """A mounted root filesystem; ``boot`` is the XBOOTLDR partition mounted apart, if any."""

    root: Path
    boot: Path | None
    backend: DiskBackend


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
