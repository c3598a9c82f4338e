"""The backends that read a disk's root filesystem, and which one a root gets.

- ``loop``: a loop device on the FUSE file and a kernel mount (needs root; the
  fastest; ext2/3/4, xfs, btrfs);
- ``fuse``: ``fuse2fs`` on the FUSE file (rootless, ext2/3/4 only);
- ``guestfs``: libguestfs in its own appliance (LVM, xfs, btrfs; see
  :mod:`imagebuilder.disk.appliance`); nothing is mounted on the host.

:func:`choose_backend` makes ``auto`` pick loop as root and fuse otherwise for
ext2/3/4, guestfs for anything else, and loop for xfs/btrfs (as root) where
libguestfs cannot run; a backend asked for that cannot read the root is refused
with the fix. A decision only: this module serves, mounts and runs nothing (the
mounts are ``root_mount``'s).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config.tree import DiskBackend
from ..errors import DiskError, host_package_hint
from .parttable import Partition

EXT = ("ext2", "ext3", "ext4")
LOOP_FS = ("xfs", "btrfs")  # besides ext*, what a loop mount reads for the auto backend
#: The fix where libguestfs has no kernel to build its appliance from.
GUESTFS_KERNEL_FIX = "give libguestfs a kernel to build its appliance from: " + host_package_hint(
    "linux-image-amd64"
)


def is_root() -> bool:
    return os.geteuid() == 0 and Path("/dev/loop-control").exists()


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
