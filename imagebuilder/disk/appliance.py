"""libguestfs access to disks the host kernel should not mount (LVM, xfs, btrfs).

Two uses: reading a disk's root for a tar output, where :func:`tar_out` streams
it (with its /boot) as a GNU tar for :class:`imagebuilder.export.retar.Spool` (much faster
than ``mount_local``, whose per-request round trips take many minutes for a full
root under TCG) and :func:`sparse_files` tells which of its files are sparse; and
:class:`GuestfsEditor` reads files and adds files to the root of a *throwaway
overlay* for dd outputs. The appliance runs under TCG unless told otherwise (KVM guests hang on
some hosts, and libguestfs then hangs with them). The Python binding ``guestfs``
is a system package (python3-guestfs), imported lazily. Nothing here writes to a
disk that was opened read-only; only :func:`editor` opens one writable.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import DiskError, host_package_hint
from .access import DiskInfo
from .parttable import LINUX_FS, Layout, pick_boot, pick_root

HINT = (
    "libguestfs needs python3-guestfs and a kernel in /boot for its appliance "
    "(try libguestfs-test-tool); as root, --disk-backend loop reads xfs and btrfs without it"
)


@functools.cache
def unavailable_reason() -> str | None:
    """Why libguestfs cannot start an appliance here, or None if it should.

    A cheap static check (no launch): the Python binding imports, and supermin has a
    kernel to build the appliance from (``/boot/vmlinuz-*``, ``$SUPERMIN_KERNEL``) or
    ``$LIBGUESTFS_PATH`` holds a fixed appliance. Container-style hosts, CI runners and
    many cloud VMs run a kernel that is not installed in ``/boot``.
    """
    try:
        import guestfs  # noqa: F401
    except ImportError:
        return "the libguestfs Python binding (python3-guestfs) is not installed"
    fixed = os.environ.get("LIBGUESTFS_PATH", "")
    if any(os.path.exists(os.path.join(d, "README.fixed")) for d in fixed.split(":") if d):
        return None
    if os.environ.get("SUPERMIN_KERNEL"):
        return None
    if not any(os.access(k, os.R_OK) for k in glob.glob("/boot/vmlinuz-*")):
        return "there is no readable kernel in /boot for libguestfs to build its appliance from"
    return None


@contextlib.contextmanager
def session(info: DiskInfo, *, readonly: bool, force_tcg: bool) -> Iterator[Any]:
    """A launched libguestfs handle with ``info.path`` as its only drive."""
    try:
        import guestfs
    except ImportError as exc:
        raise DiskError(
            "this disk needs --disk-backend guestfs (xfs, btrfs or LVM root), but the "
            "libguestfs Python binding (module guestfs) is missing",
            hint=host_package_hint("python3-guestfs")
            + ", and use a venv made with --system-site-packages",
        ) from exc
    g = guestfs.GuestFS(python_return_dict=True)
    try:
        if "LIBGUESTFS_BACKEND" not in os.environ:
            g.set_backend("direct")
        if force_tcg and "LIBGUESTFS_BACKEND_SETTINGS" not in os.environ:
            g.set_backend_settings(["force_tcg"])
        g.add_drive_opts(os.fspath(info.path), format=info.format, readonly=readonly)
        try:
            g.launch()
        except RuntimeError as exc:
            raise DiskError(f"libguestfs could not start its appliance: {exc}", hint=HINT) from exc
        yield g
    finally:
        with contextlib.suppress(RuntimeError):
            g.shutdown()
        g.close()


def _device(g: Any, number: int) -> str:
    devices: list[str] = g.list_devices()
    return devices[0] if number == 0 else f"{devices[0]}{number}"


def mount_fs(g: Any, layout: Layout, *, readonly: bool) -> None:
    """Mount the root at / and its /boot (if separate) in the appliance."""
    mount = g.mount_ro if readonly else g.mount
    mounts: dict[str, str] = {}
    roots: list[str] = g.inspect_os()
    if roots:
        found: dict[str, str] = g.inspect_get_mountpoints(roots[0])
        mounts = {mp: dev for mp, dev in found.items() if mp in ("/", "/boot")}
    if "/" not in mounts:
        root = pick_root(layout)
        if root is not None and root.fstype in LINUX_FS:
            mounts["/"] = _device(g, root.number)
        else:
            fss: dict[str, str] = g.list_filesystems()
            lvs = [d for d, t in fss.items() if t in LINUX_FS and d.startswith("/dev/mapper/")]
            lvs += [d for d in g.lvs() if fss.get(d) in LINUX_FS]
            if not lvs:
                raise DiskError(
                    "libguestfs found no Linux root filesystem on the disk",
                    hint="is this a bootable Linux disk image?",
                )
            mounts["/"] = max(lvs, key=lambda d: int(g.blockdev_getsize64(d)))
    if "/boot" not in mounts:
        boot = pick_boot(layout)
        if boot is not None:
            mounts["/boot"] = _device(g, boot.number)
    for mp in sorted(mounts, key=len):
        try:
            mount(mounts[mp], mp)
        except RuntimeError as exc:
            raise DiskError(
                f"libguestfs could not mount {mounts[mp]} on {mp}: {exc}", hint=HINT
            ) from exc


@contextlib.contextmanager
def tar_out(g: Any, workdir: Path) -> Iterator[BinaryIO]:
    """GNU tar of the appliance's / (numeric owners, xattrs), read as a stream.

    libguestfs writes the tar into a FIFO from a thread while the caller reads
    it: no copy of the tree lands on the host's disk.
    """
    fifo = workdir / "guestfs-tar.fifo"
    os.mkfifo(fifo)
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            g.tar_out("/", os.fspath(fifo), numericowner=True, xattrs=True)
        except BaseException as exc:  # reported to the caller below
            errors.append(exc)
            # If it failed before opening the FIFO, open it once so the reader's
            # open() returns (and then sees end of file).
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))

    thread = threading.Thread(target=produce, name="guestfs-tar-out", daemon=True)
    thread.start()
    stream = open(fifo, "rb", buffering=1 << 20)  # noqa: SIM115 - closed below
    try:
        yield stream
    except BaseException:
        stream.close()  # a writer still running gets EPIPE and stops
        thread.join(timeout=120)
        if errors:
            raise DiskError(f"libguestfs tar-out failed: {errors[0]}", hint=HINT) from None
        raise
    stream.close()
    thread.join(timeout=120)
    if errors:
        raise DiskError(f"libguestfs tar-out failed: {errors[0]}", hint=HINT)


def sparse_files(g: Any, paths: Iterable[bytes]) -> set[bytes]:
    """Those of ``paths`` (relative to /) that are regular files with fewer blocks than
    their size: what :func:`imagebuilder.export.tarstream.write_tree` stores as sparse. One call
    per directory; names that are not UTF-8 cannot be passed, and count as not sparse."""
    by_dir: dict[bytes, list[bytes]] = {}
    for path in paths:
        parent, _, name = path.rpartition(b"/")
        by_dir.setdefault(parent, []).append(name)
    found: set[bytes] = set()
    for parent, names in sorted(by_dir.items()):
        ok = [n for n in names if _is_utf8(n)] if _is_utf8(parent) else []
        stats = g.lstatnslist("/" + parent.decode(), [n.decode() for n in ok]) if ok else []
        for name, st in zip(ok, stats, strict=True):
            if stat.S_ISREG(st["st_mode"]) and st["st_blocks"] * 512 < st["st_size"]:
                found.add(parent + b"/" + name if parent else name)
    return found


def _is_utf8(name: bytes) -> bool:
    try:
        name.decode()
    except UnicodeDecodeError:
        return False
    return True


class GuestfsEditor:
    """Edits the root filesystem of a throwaway overlay through libguestfs."""

    def __init__(self, g: Any) -> None:
        self.g = g

    def read(self, path: str) -> bytes | None:
        if not self.g.is_file(path):
            return None
        data: bytes = self.g.read_file(path)
        return data

    def listdir(self, path: str) -> list[str] | None:
        if not self.g.is_dir(path):
            return None
        return sorted(self.g.ls(path))

    def entries(self, path: str) -> dict[str, tuple[int, int, int]] | None:
        """{name: (st_mode, uid, size)} of a directory, None if it is not one."""
        names = self.listdir(path)
        if names is None:
            return None
        stats = self.g.lstatnslist(path, names) if names else []
        return {
            n: (int(s["st_mode"]), int(s["st_uid"]), int(s["st_size"]))
            for n, s in zip(names, stats, strict=True)
        }

    def root_mtime(self) -> int:
        return int(self.g.statns("/")["st_mtime_sec"])

    def used_bytes(self) -> int:
        """Bytes in use on the mounted filesystems (for a progress total)."""
        total = 0
        for mp in self.g.mountpoints().values():
            v = self.g.statvfs(mp)
            total += (int(v["blocks"]) - int(v["bfree"])) * int(v["frsize"])
        return total

    def mkdir(self, path: str, mode: int, mtime: int) -> None:
        self.g.mkdir_mode(path, mode & 0o7777)
        self.g.chown(0, 0, path)
        self.g.chmod(mode & 0o7777, path)
        self.g.utimens(path, mtime, 0, mtime, 0)

    def write(self, path: str, data: bytes, mode: int, mtime: int) -> None:
        self.g.write(path, data)
        self.g.chown(0, 0, path)
        self.g.chmod(mode & 0o7777, path)
        self.g.utimens(path, mtime, 0, mtime, 0)


@contextlib.contextmanager
def editor(info: DiskInfo, layout: Layout, *, force_tcg: bool) -> Iterator[GuestfsEditor]:
    """Open the overlay ``info`` writable and mount its root; unmounted and synced at exit."""
    with session(info, readonly=False, force_tcg=force_tcg) as g:
        mount_fs(g, layout, readonly=False)
        yield GuestfsEditor(g)
        g.umount_all()
        g.sync()
