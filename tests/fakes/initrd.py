"""Initramfs archives for tests: the "newc" cpio format the kernel unpacks.

:func:`newc` writes the archive; :func:`busybox_initrd` makes a bootable one whose
``/init`` is a shell script run by the host's busybox (with the libraries it links),
for booting a real kernel in qemu without an OS.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

#: content, (content, st_mode), or a device: (b"", st_mode, (major, minor)).
Member = bytes | tuple[bytes, int] | tuple[bytes, int, tuple[int, int]]


def newc(members: Mapping[str, Member]) -> bytes:
    """A "newc" cpio archive, as the installer initrd is; names ending in / are dirs."""
    out = b""
    for ino, (name, member) in enumerate([*members.items(), ("TRAILER!!!", b"")], start=1):
        data, mode, rdev = b"", 0o100644, (0, 0)
        if isinstance(member, bytes):
            data = member
        elif len(member) == 2:
            data, mode = member
        else:
            data, mode, rdev = member
        if name.endswith("/"):
            name, mode = name.rstrip("/"), 0o40755
        raw = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, *rdev, len(raw), 0]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out += header + raw
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return out


def busybox_initrd(init_script: str) -> bytes:
    """A gzip initramfs: ``/init`` = ``init_script`` (run by busybox sh), busybox, its libs."""
    busybox = shutil.which("busybox")
    assert busybox is not None, "busybox is installed by scripts/setup-host.sh"
    members: dict[str, Member] = {
        "bin/": b"", "dev/": b"", "proc/": b"", "sys/": b"", "lib/": b"", "lib64/": b"",
        "bin/busybox": (Path(busybox).read_bytes(), 0o100755),
        "init": (init_script.encode(), 0o100755),
        "dev/console": (b"", 0o20600, (5, 1)),
    }  # fmt: skip
    ldd = subprocess.run(["ldd", busybox], capture_output=True, text=True, check=True).stdout
    for lib in re.findall(r"(/\S+\.so[.\d]*) \(0x", ldd):
        real = Path(lib).resolve()
        parts = Path(lib).parts[1:]
        for i in range(1, len(parts)):
            members.setdefault("/".join(parts[:i]) + "/", b"")
        members["/".join(parts)] = (real.read_bytes(), 0o100755)
    return gzip.compress(newc(members), mtime=0)
