"""The libguestfs half of the tar export without an appliance: GNU tar's stream of a
tree (what ``tar_out`` runs in the appliance), re-encoded by ``retar.Spool``, must be
byte for byte what ``write_tree`` writes when it walks the same tree itself. The
stream is made in reverse sorted order, so every hard link's data comes last and
every member is out of place, and in directory order, as the appliance makes it.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import subprocess
from pathlib import Path

import pytest

from imagebuilder.export import retar, tarstream

EPOCH = 1_700_000_000


def make_tree(root: Path) -> None:
    for d in ("a", "a/b", "etc", "dir/sub", "l" * 120 + "/deep", "emptydir"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "a-c").write_text("after a/ in a sorted walk, before it in plain byte order\n")
    (root / "a.d").write_text("dot\n")
    (root / "a/b/file").write_text("nested\n")
    (root / "etc/machine-id").write_text("0123456789abcdef\n")
    (root / "etc/os-release").write_text("ID=debian\n")
    (root / "z-data").write_bytes(b"shared data\n" * 100)
    os.link(root / "z-data", root / "dir/link")  # sorted first: it must carry the data
    os.link(root / "z-data", root / "a/b/link")
    os.symlink("../z-data", root / "dir/sym")
    os.symlink("y" * 150, root / "longlink")
    (root / ("l" * 120) / "deep" / ("f" * 90)).write_text("long\n")
    with open(root / "sparse", "wb") as f:
        f.truncate(8 << 20)
        f.seek(5_000_000)
        f.write(b"data")
    # Zero blocks, but allocated: written whole, not as a sparse file.
    (root / "zeros").write_bytes(bytes(3 << 20) + b"end" + bytes(5000))
    (root / os.fsdecode(b"caf\xe9")).write_text("not UTF-8\n")
    os.mkfifo(root / "fifo")
    (root / "new").write_text("from the future\n")
    os.utime(root / "new", ns=(1_800_000_000 * 10**9, 1_800_000_000 * 10**9))
    # A float of this mtime is 1600000001.0: whole seconds must still be 1600000000.
    fine = 1_600_000_000 * 10**9 + 999_999_999
    os.utime(root / "a.d", ns=(fine, fine))
    with contextlib.suppress(OSError):  # no user xattrs on this filesystem
        os.setxattr(root / "a-c", "user.note", b"value\x00\xff")
    if os.geteuid() == 0:
        os.mknod(root / "cdev", 0o644 | stat.S_IFCHR, os.makedev(1, 3))
        os.chown(root / "a.d", 1000, 1001)


def all_paths(root: Path) -> list[bytes]:
    found = []
    for dirpath, dirs, files in os.walk(os.fsencode(root)):
        for name in dirs + files:
            found.append(os.path.relpath(os.path.join(dirpath, name), os.fsencode(root)))
    return found


def gnu_tar(root: Path, names: list[bytes] | None) -> bytes:
    """The stream ``tar_out`` makes (numeric owners, xattrs); ``names`` in that order."""
    argv = ["tar", "-C", os.fspath(root), "--numeric-owner", "--xattrs", "-cf", "-"]
    if names is None:
        argv.append(".")
    else:
        argv += ["--no-recursion", "--verbatim-files-from", "-T", "-"]
    listing = b"".join(b"./" + n + b"\n" for n in names or []) + (b".\n" if names else b"")
    return subprocess.run(argv, input=listing, capture_output=True, check=True).stdout


OVERLAY = {
    "curtin": tarstream.Synthetic(stat.S_IFDIR | 0o755, mtime=EPOCH),
    "curtin/curtin-hooks": tarstream.Synthetic(stat.S_IFREG | 0o750, data=b"#!/bin/sh\n"),
    "etc/os-release": tarstream.Synthetic(stat.S_IFREG | 0o644, data=b"ID=replaced\n"),
    "dir/sub": tarstream.Synthetic(stat.S_IFREG | 0o644, data=b"a file where a dir was\n"),
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    make_tree(root)
    (root / "dir/sub/hidden").write_text("under a directory the overlay replaces\n")
    return root


@pytest.mark.parametrize("order", ["reverse-sorted", "directory"])
@pytest.mark.parametrize("epoch", [EPOCH, None])
def test_the_stream_re_encodes_to_write_trees_bytes(
    tree: Path, tmp_path: Path, order: str, epoch: int | None
) -> None:
    names = sorted(all_paths(tree), key=lambda p: p.replace(b"/", b"\0"), reverse=True)
    stream = gnu_tar(tree, names if order == "reverse-sorted" else None)
    want = io.BytesIO()
    expected = tarstream.write_tree(
        want, tree, epoch=epoch, overlay=OVERLAY, emptied=["etc/machine-id"]
    )
    work = tmp_path / "work"
    work.mkdir()
    got = io.BytesIO()
    with retar.Spool(work) as spool:
        spool.take(io.BytesIO(stream))
        assert list(work.iterdir()) == []  # the spool has no name: nothing to leave behind
        maybe = spool.maybe_sparse()
        assert b"sparse" in maybe and b"zeros" in maybe and b"a-c" not in maybe
        sparse = {
            p for p in maybe if (s := os.lstat(tree / os.fsdecode(p))).st_blocks * 512 < s.st_size
        }
        stats = spool.write(
            got, epoch=epoch, sparse=sparse, overlay=OVERLAY, emptied=["etc/machine-id"]
        )
    assert got.getvalue() == want.getvalue()
    assert stats == expected and stats.emptied == ["etc/machine-id"]
    assert list(work.iterdir()) == []
