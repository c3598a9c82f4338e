"""Loop devices and mounts of a bootstrap disk, each one released whatever happens.

:func:`attached` puts a raw disk on a loop device with its partitions,
:func:`mounted` mounts a filesystem (or tmpfs, or a bind mount), and
:func:`mounts_under` says what is still mounted below a directory. Every loop
device and mount is a context manager for the caller's ExitStack, released on
any error or Ctrl-C; release commands are retried while the kernel says busy.

This module neither partitions nor formats (:mod:`imagebuilder.base.disklayout`),
never runs a program inside the target, knows no packages, mirrors or caches,
and never prints.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from .. import run
from ..errors import BootstrapError, CommandError
from .disklayout import DiskLayout, partition_device


@contextlib.contextmanager
def attached(image: Path, layout: DiskLayout) -> Iterator[Path]:
    """Attach ``image`` to a free loop device with its partitions; detach on exit.

    Some kernels lack partition-table parsers, so partitions are also added from
    user space (``partx``), which reads the table itself. --partscan also makes
    the kernel drop the partitions again on detach.
    """
    proc = run.run(["losetup", "--find", "--show", "--partscan", image])
    dev = Path(proc.stdout.decode().strip())
    try:
        if all(partition_device(dev, p.number).exists() for p in layout.partitions):
            run.run(["partx", "--update", dev])  # match the table, even if nodes were stale
        else:
            run.run(["partx", "--delete", dev], check=False)
            run.run(["partx", "--add", dev])
        for p in layout.partitions:
            _wait_for(partition_device(dev, p.number))
        yield dev
    finally:
        _retry(["losetup", "--detach", dev])


def _wait_for(node: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not node.exists():
        if time.monotonic() > deadline:
            raise BootstrapError(
                f"partition device {node} did not appear",
                hint="the host kernel must support loop partitions (losetup -P or partx)",
            )
        time.sleep(0.1)


def _retry(argv: Sequence[str | os.PathLike[str]], tries: int = 5) -> None:
    """Run a release command (umount, losetup -d), retrying briefly while busy."""
    for attempt in range(tries):
        try:
            run.run(argv)
            return
        except CommandError:
            if attempt == tries - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


@contextlib.contextmanager
def mounted(
    source: str | os.PathLike[str], target: Path, *options: str, recursive_umount: bool = False
) -> Iterator[Path]:
    """``mount [options] source target``; unmounted on exit (recursively if asked)."""
    target.mkdir(parents=True, exist_ok=True)
    run.run(["mount", *options, source, target])
    try:
        yield target
    finally:
        umount(target, recursive=recursive_umount)


def umount(target: Path, *, recursive: bool = False) -> None:
    """Unmount, retrying while busy; as a last resort detach lazily so nothing leaks."""
    argv: list[str | os.PathLike[str]] = ["umount", *(["-R"] if recursive else []), target]
    try:
        _retry(argv)
    except CommandError:
        run.run(["umount", "--lazy", *(["-R"] if recursive else []), target], check=False)
        raise


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path`` (so nobody deletes a tree with /dev bound in it)."""
    prefix = os.path.realpath(path)
    found: list[Path] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt == prefix or mnt.startswith(prefix.rstrip("/") + "/"):
                found.append(Path(mnt))
    return found
