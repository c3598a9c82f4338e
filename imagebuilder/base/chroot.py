"""Working inside a bootstrap target: its private /dev, programs run in it, files written to it.

:func:`chroot_mounts` gives the mounted root filesystem the /dev, /dev/pts, /proc
and /sys that chrooted tools (grub-install, update-grub, locale-gen, systemctl)
need, without exposing the host's /dev; :func:`in_chroot` runs one program there;
:func:`write_file` writes a file of the target tree, replacing a symlink there
rather than following it out of the tree.

This module never exposes the host's /dev to the target, decides no file
contents (its callers do), knows no packages, mirrors or caches, and never
prints.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from .. import run
from .disklayout import DiskLayout, partition_device
from .mounts import mounted


@contextlib.contextmanager
def chroot_mounts(root: Path, disk: Path, layout: DiskLayout) -> Iterator[Path]:
    """A private /dev (plus /dev/pts, /proc, /sys) inside ``root`` for chrooted tools.

    /dev is a fresh tmpfs holding the basic character devices, ``disk`` and its
    partitions, and the ``/dev/disk/by-uuid`` link of the root filesystem that
    udev would make (grub-mkconfig writes ``root=UUID=...`` only when it exists).
    The host's /dev is never exposed, so nothing in the chroot can touch it.
    """
    with contextlib.ExitStack() as stack:
        dev = stack.enter_context(mounted("tmpfs", root / "dev", "-t", "tmpfs", "-o", "mode=755"))
        _populate_dev(dev, disk, layout)
        stack.enter_context(
            mounted("devpts", dev / "pts", "-t", "devpts", "-o", "newinstance,ptmxmode=0666")
        )
        stack.enter_context(mounted("proc", root / "proc", "-t", "proc"))
        stack.enter_context(mounted("/sys", root / "sys", "--bind"))
        yield root


def _mknod_like(host: Path, node: Path) -> None:
    st = os.stat(host)
    os.mknod(node, st.st_mode, st.st_rdev)
    os.chmod(node, stat.S_IMODE(st.st_mode))


def _populate_dev(dev: Path, disk: Path, layout: DiskLayout) -> None:
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        _mknod_like(Path("/dev", name), dev / name)
    links = {"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
             "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}  # fmt: skip
    for name, target in links.items():
        (dev / name).symlink_to(target)
    (dev / "shm").mkdir()
    (dev / "pts").mkdir()
    _mknod_like(disk, dev / disk.name)
    for p in layout.partitions:
        part = partition_device(disk, p.number)
        _mknod_like(part, dev / part.name)
    by_uuid = dev / "disk" / "by-uuid"
    by_uuid.mkdir(parents=True)
    (by_uuid / layout.root_uuid).symlink_to(f"../../{partition_device(disk, 1).name}")


def in_chroot(root: Path, *argv: str, env: dict[str, str] | None = None) -> str:
    """Run a program inside ``root`` (mounts from :func:`chroot_mounts`); its stdout."""
    proc = run.run(["chroot", root, *argv], env=env)
    return proc.stdout.decode("utf-8", "replace")


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` inside a target tree (replacing a symlink, not following it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    path.write_text(text)
    path.chmod(mode)
