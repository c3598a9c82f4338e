"""Files of a mounted image, read without following the image's symlinks.

An image's absolute links point into the host's filesystem, not the image's, so
:func:`read_in_root` and :func:`listdir_in_root` open ``root/rel`` one component at
a time with ``O_NOFOLLOW`` and answer None for anything that is not a regular file
or a directory. Read-only; this module mounts nothing and knows no backend.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


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
