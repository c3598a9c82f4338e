"""Small real disk images for the export, disk and inspect tests.

``populate`` fills a directory with every kind of file a root filesystem holds
(modes with setuid/sticky, owners, xattrs incl. a file capability, a POSIX ACL,
hard links, symlinks, device nodes, a fifo, a sparse file, an empty directory,
long names) plus the files MAAS checks for; ``make_disk`` turns directories into
ext4 (``mke2fs -d``) or xfs partitions of a GPT disk, as qcow2 or raw. Building
a populated tree needs root (mknod, chown, setcap); images themselves do not.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from imagebuilder.disk.parttable import XBOOTLDR_GUID

EPOCH = 1_700_000_000
OLD = 1_600_000_000  # mtime older than EPOCH: kept
NEW = 1_800_000_000  # mtime newer than EPOCH: clamped


def sh(*argv: str | os.PathLike[str]) -> None:
    subprocess.run([os.fspath(a) for a in argv], check=True, capture_output=True)


def minimal_root(root: Path, *, distro: str = "ubuntu") -> None:
    """The files inspect looks for in a deployable image (no populate() extras)."""
    for d in ("etc/ssh", "usr/bin", "usr/sbin", "boot", "var/lib/dpkg", "home"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text(f'ID={distro}\nPRETTY_NAME="{distro} test"\n')
    (root / "etc/machine-id").write_text("")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    for exe in ("usr/bin/cloud-init", "usr/sbin/netplan"):
        (root / exe).write_text("#!/bin/sh\n")
        (root / exe).chmod(0o755)
    (root / "var/lib/dpkg/status").write_text(
        "Package: base-files\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\n\n"
        "Package: gone\nStatus: deinstall ok config-files\nVersion: 2\nArchitecture: amd64\n"
    )


def populate(root: Path) -> None:
    """Every kind of entry (needs root)."""
    minimal_root(root)
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "a.txt").write_text("hello\n")
    os.chown(root / "a.txt", 1000, 1001)
    os.setxattr(root / "a.txt", "user.note", b"value\x00\xff")
    (root / "dir/sub").mkdir(parents=True)
    os.link(root / "a.txt", root / "dir/hardlink")
    os.symlink("../a.txt", root / "dir/sym")
    os.symlink("z" * 150, root / "longlink")
    long_dir = root / ("l" * 120) / "deep"
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 90)).write_text("long\n")
    shutil.copy2("/usr/bin/true", root / "suid")
    os.chmod(root / "suid", 0o4755)
    sh("setcap", "cap_net_raw+ep", root / "suid")
    os.setxattr(root / "suid", "security.selinux", b"system_u:object_r:bin_t:s0\0")
    (root / "acl").write_bytes(b"x" * 5000)
    sh("setfacl", "-m", "u:1234:rw", root / "acl")
    sh("setfacl", "-d", "-m", "g:55:rx", root / "dir")
    os.mknod(root / "cdev", 0o644 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "bdev", 0o660 | stat.S_IFBLK, os.makedev(7, 0))
    os.mkfifo(root / "fifo")
    with open(root / "sparse", "wb") as f:
        f.truncate(8 << 20)
        f.seek(5_000_000)
        f.write(b"data")
    (root / "emptydir").mkdir()
    os.chmod(root / "emptydir", 0o1777)
    (root / "new").write_text("from the future\n")
    os.utime(root / "new", (NEW, NEW))
    os.utime(root / "a.txt", (OLD, OLD))


@dataclass(frozen=True)
class Part:
    src: Path | None  # directory copied in (None: empty filesystem)
    size_mib: int
    name: str = "cloudimg-rootfs"
    fstype: str = "ext4"
    type_guid: str = "8300"
    label: str = ""
    uuid: str = ""  # filesystem UUID (ext4), random if empty


def make_disk(path: Path, parts: Sequence[Part], *, fmt: str = "qcow2") -> Path:
    """A GPT disk with ``parts`` (numbered 1.., ESP-less), as ``fmt`` at ``path``."""
    raw = path.with_suffix(".raw") if fmt != "raw" else path
    total = 2 + sum(p.size_mib for p in parts) + 1
    with open(raw, "wb") as f:
        f.truncate(total << 20)
    start = 2048
    args: list[str] = []
    for i, p in enumerate(parts, 1):
        end = start + (p.size_mib << 11) - 1
        args += ["-n", f"{i}:{start}:{end}", "-t", f"{i}:{p.type_guid}", "-c", f"{i}:{p.name}"]
        start = end + 1
    sh("sgdisk", *args, raw)
    start = 2048
    for p in parts:
        offset = start * 512
        size = p.size_mib << 20
        if p.fstype == "ext4":
            extra = ["-d", os.fspath(p.src)] if p.src is not None else []
            extra += ["-U", p.uuid] if p.uuid else []
            sh(
                "mke2fs",
                "-q",
                "-F",
                "-t",
                "ext4",
                "-L",
                p.label or p.name[:16],
                "-E",
                f"offset={offset},root_owner=0:0",
                *extra,
                raw,
                f"{size >> 10}k",
            )
        elif p.fstype == "xfs":
            part = path.parent / "xfs.part"
            with open(part, "wb") as f:
                f.truncate(size)
            sh("mkfs.xfs", "-q", "-L", p.label or "root", part)
            if p.src is not None:  # needs root: fill it through a loop mount
                mnt = path.parent / "xfs.mnt"
                mnt.mkdir()
                sh("mount", "-o", "loop", part, mnt)
                try:
                    sh("cp", "-a", f"{p.src}/.", mnt)
                finally:
                    sh("umount", mnt)
                    mnt.rmdir()
            sh(
                "dd",
                f"if={part}",
                f"of={raw}",
                "bs=1M",
                f"seek={offset >> 20}",
                "conv=notrunc,sparse",
            )
            part.unlink()
        start += p.size_mib << 11
    if fmt != "raw":
        sh("qemu-img", "convert", "-O", fmt, raw, path)
        raw.unlink()
    return path


def xbootldr(src: Path | None, size_mib: int = 16) -> Part:
    return Part(src, size_mib, name="boot", type_guid=XBOOTLDR_GUID, label="BOOT")


class Snap(NamedTuple):
    mode: int
    uid: int
    gid: int
    rdev: int
    body: str | None  # sha256 of a file's content, a symlink's target
    xattrs: dict[str, bytes]
    group: str | None  # first path of a hard-link group
    mtime: int


def snapshot(root: Path) -> dict[str, Snap]:
    """Every entry under ``root``, by relative path."""
    import hashlib

    out: dict[str, Snap] = {}
    groups: dict[tuple[int, int], str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted([*dirnames, *filenames]):
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            st = p.lstat()
            if stat.S_ISREG(st.st_mode):
                body: str | None = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(p)
            else:
                body = None
            try:
                names = os.listxattr(p, follow_symlinks=False)
            except OSError:
                names = []
            xattrs = {n: os.getxattr(p, n, follow_symlinks=False) for n in sorted(names)}
            group = None
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                group = groups.setdefault((st.st_dev, st.st_ino), rel)
            out[rel] = Snap(
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_rdev,
                body,
                xattrs,
                group,
                int(st.st_mtime),
            )
    return out


def curtin_extract(archive: Path, target: Path, flag: str = "--gzip") -> None:
    """Extract as curtin does: smtar sniffs the compression and runs GNU tar with these flags."""
    target.mkdir(parents=True, exist_ok=True)
    with open(archive, "rb") as f:
        subprocess.run(
            [
                "tar",
                flag,
                "-C",
                os.fspath(target),
                "--xattrs",
                "--xattrs-include=*",
                "-Sxpf",
                "-",
                "--numeric-owner",
            ],
            stdin=f,
            check=True,
            capture_output=True,
        )
