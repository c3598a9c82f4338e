"""Throwaway copy-on-write overlays, and adding ``/curtin`` to the root inside one.

dd outputs must carry ``/curtin/`` on their root filesystem. The files go into
a qcow2 overlay created here on top of the disk (never into the disk itself or
its base), which the export then streams. Two editors:

- :class:`DebugfsEditor` for ext2/3/4: e2fsprogs' ``debugfs`` writes through the
  overlay's FUSE export, no mount, no root, and with ``E2FSPROGS_FAKE_TIME`` set
  to SOURCE_DATE_EPOCH every timestamp it writes is fixed: two exports of the same
  disk are byte-identical;
- :class:`imagebuilder.disk.guestfs.GuestfsEditor` for anything else (LVM, xfs,
  btrfs), through libguestfs (the kernel's journal and timestamps make those
  outputs differ run to run).
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Protocol

from ..disk.access import DiskInfo
from ..errors import DiskError
from ..run import run
from .curtin import HookFile


class Editor(Protocol):
    def read(self, path: str) -> bytes | None: ...
    def listdir(self, path: str) -> list[str] | None: ...
    def root_mtime(self) -> int: ...
    def mkdir(self, path: str, mode: int, mtime: int) -> None: ...
    def write(self, path: str, data: bytes, mode: int, mtime: int) -> None: ...


def add_curtin(ed: Editor, files: list[HookFile], has_dir: bool, mtime: int) -> dict[str, int]:
    """Queue ``files`` under /curtin (made first unless ``has_dir``); returns {path: mode}."""
    expect: dict[str, int] = {}
    if not has_dir:
        ed.mkdir("/curtin", stat.S_IFDIR | 0o755, mtime)
        expect["/curtin"] = stat.S_IFDIR | 0o755
    for f in files:
        path = f"/curtin/{f.name}"
        if f.is_dir:
            ed.mkdir(path, f.mode, mtime)
        else:
            ed.write(path, f.data, f.mode, mtime)
        expect[path] = f.mode
    return expect


def create(info: DiskInfo, workdir: Path) -> DiskInfo:
    """A new empty qcow2 overlay in ``workdir`` backed (read-only) by ``info.path``."""
    path = workdir / "overlay.qcow2"
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", info.format, "-b", info.path, path])
    return DiskInfo(path, "qcow2", info.virtual_size, os.fspath(info.path))


_SAFE = re.compile(r"^[A-Za-z0-9._+@/ -]+$")


def _quote(path: str) -> str:
    if not _SAFE.match(path):
        raise DiskError(
            f"cannot write {path!r} with debugfs (unusual characters in the name)",
            hint="rename the file, or use --disk-backend guestfs",
        )
    return f'"{path}"'


class DebugfsEditor:
    """Reads and writes an ext filesystem at ``offset`` of ``device`` with debugfs."""

    def __init__(self, device: Path, offset: int, workdir: Path, fake_time: int | None) -> None:
        self.spec = f"{os.fspath(device)}?offset={offset}"
        self.workdir = workdir
        self.fake_time = fake_time
        self._commands: list[str] = []
        self._n = 0

    def _debugfs(self, request: str) -> tuple[bytes, str]:
        proc = run(["debugfs", "-R", request, self.spec])
        return proc.stdout, proc.stderr.decode(errors="replace")

    def read(self, path: str) -> bytes | None:
        out, err = self._debugfs(f"cat {_quote(path)}")
        return None if "not found" in err or "not a regular file" in err.lower() else out

    def entries(self, path: str) -> dict[str, tuple[int, int, int]] | None:
        """{name: (st_mode, uid, size)} of a directory, None if it is not one."""
        out, err = self._debugfs(f"ls -p {_quote(path)}")
        if "not found" in err or "not a directory" in err.lower():
            return None
        found = {}
        for line in out.decode(errors="surrogateescape").splitlines():
            f = line.split("/")  # /inode/mode/uid/gid/name/size/
            if len(f) >= 7 and f[5] not in (".", "..") and f[1].isdigit():
                found[f[5]] = (int(f[2], 8), int(f[3]), int(f[6] or 0))
        return found

    def listdir(self, path: str) -> list[str] | None:
        found = self.entries(path)
        return None if found is None else sorted(found)

    def root_mtime(self) -> int:
        out, _ = self._debugfs("stat /")
        m = re.search(rb"mtime: 0x([0-9a-f]+)", out)
        return int(m.group(1), 16) if m else 0

    def _fix(self, path: str, mode: int) -> None:
        q = _quote(path)
        self._commands += [f"sif {q} mode 0{mode:o}", f"sif {q} uid 0", f"sif {q} gid 0"]

    def mkdir(self, path: str, mode: int, mtime: int) -> None:
        self._commands.append(f"mkdir {_quote(path)}")
        self._fix(path, mode)

    def write(self, path: str, data: bytes, mode: int, mtime: int) -> None:
        self._n += 1
        src = self.workdir / f"debugfs-src-{self._n}"
        src.write_bytes(data)
        self._commands += [f"rm {_quote(path)}", f"write {_quote(os.fspath(src))} {_quote(path)}"]
        self._fix(path, mode)

    def commit(self, expect: dict[str, int]) -> None:
        """Run the queued writes in one debugfs session, then check ``expect`` (path: mode)."""
        if not self._commands:
            return
        script = self.workdir / "debugfs.cmds"
        script.write_text("\n".join(self._commands) + "\n")
        env = {"E2FSPROGS_FAKE_TIME": str(self.fake_time)} if self.fake_time is not None else None
        run(["debugfs", "-w", "-f", script, self.spec], env=env)
        self._commands = []
        for path, mode in expect.items():
            out, err = self._debugfs(f"stat {_quote(path)}")
            m = re.search(rb"Mode:\s+0?([0-7]+)", out)
            if m is None or int(m.group(1), 8) != stat.S_IMODE(mode):
                raise DiskError(
                    f"debugfs did not write {path}: {err.strip()[-200:]}",
                    hint="check the root filesystem with e2fsck, or use --disk-backend guestfs",
                )
