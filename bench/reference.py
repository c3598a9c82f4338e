"""The reference pipelines imagebuilder's export is compared against, run for real.

1. packer-maas's post-processor (its ``scripts/fuse-nbd`` sourced, then
   ``scripts/fuse-tar-root``), performed step by step with the same commands and
   options: ``qemu-nbd --shared=10`` on a unix socket, ``nbdfuse --command nbdkit -s
   nbd socket=... --filter=partition partition=N``, ``fuse2fs -o fakeroot`` (a
   read-write mount, as theirs), machine-id truncated, the same ``tar -Scpf ...`` to an
   uncompressed file, the ``bls_boot`` look-up with ``parted -ms``, then
   ``pigz --best --force`` (``gzip`` when pigz is missing). The script's fixed waits
   (``sleep 5`` after starting qemu-nbd, 1 s polls for nbdfuse) are replaced by
   0.05 s readiness polls, so the reference is timed slightly *faster* than packer-maas
   really is; everything it writes is kept under the caller's scratch directory.
2. ``virt-tar-out -a DISK / - | pigz`` (libguestfs, forced to TCG).

The command lines are built by pure functions (unit-tested); the runners only run
them. The disk given must be a throwaway copy: packer-maas's mount writes to it.
Nothing here prints.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from imagebuilder import run
from imagebuilder.errors import CommandError

TAR_OPTIONS = ("--acls", "--selinux", "--xattrs")
GUESTFS_ENV = {"LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}


# ---- packer-maas: the command lines of fuse-nbd and fuse-tar-root ---------------------


def qemu_nbd_argv(sock: Path, fmt: str, disk: Path) -> list[str]:
    return ["qemu-nbd", f"--socket={sock}", f"--format={fmt}", "--shared=10", str(disk)]


def nbdfuse_argv(dev: Path, sock: Path, partition: int | None = None) -> list[str]:
    """mount_disk (whole disk) or mount_part (nbdkit's partition filter) of fuse-nbd."""
    argv = ["nbdfuse", str(dev), "--command", "nbdkit", "-s", "nbd", f"socket={sock}"]
    if partition is not None:
        argv += ["--filter=partition", f"partition={partition}"]
    return argv


def fuse2fs_argv(dev: Path, mountpoint: Path) -> list[str]:
    return ["fuse2fs", f"{dev}/nbd", str(mountpoint), "-o", "fakeroot"]


def tar_create_argv(tarfile: Path, root: Path) -> list[str]:
    return ["tar", "-Scpf", str(tarfile), *TAR_OPTIONS, "--one-file-system",
            "--exclude-backups", "-C", str(root), "."]  # fmt: skip


def tar_append_boot_argv(tarfile: Path, tmp_dir: Path) -> list[str]:
    return ["tar", "-Supf", str(tarfile), *TAR_OPTIONS, "-C", str(tmp_dir), "boot/"]


def parted_argv(disk_dev: Path) -> list[str]:
    return ["parted", "-ms", f"{disk_dev}/nbd", "print"]


def bls_boot_partition(parted_output: str) -> int | None:
    """``grep bls_boot | cut -d: -f1`` on ``parted -ms print`` output."""
    for line in parted_output.splitlines():
        if "bls_boot" in line:
            first = line.split(":", 1)[0]
            if first.isdigit():
                return int(first)
    return None


def compress_argv(tarfile: Path, gzip_cmd: str) -> list[str]:
    return [gzip_cmd, "--best", "--force", str(tarfile)]


def tar_name(output: Path) -> Path:
    """``TARFILE=${OUTPUT%*.gz}``."""
    return output.with_name(output.name.removesuffix(".gz"))


def virt_tar_out_argv(disk: Path) -> list[str]:
    return ["virt-tar-out", "-a", str(disk), "/", "-"]


# ---- running them ---------------------------------------------------------------------


def wait_until(ready: Callable[[], bool], what: str, *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise CommandError([what], -1, f"{what}: not ready after {timeout:.0f} s")
        time.sleep(0.05)


def _fuse_unmount(path: Path) -> None:
    run.run(["fusermount", "-u", "-z", path], check=False)
    if any(line.split()[1] == str(path) for line in _mounts()):
        run.run(["umount", "-f", path], check=False)


def _mounts() -> list[str]:
    try:
        return [ln for ln in Path("/proc/mounts").read_text().splitlines() if len(ln.split()) > 1]
    except OSError:
        return []


class PackerMaasPostProcessor:
    """fuse-nbd + fuse-tar-root for one disk; ``run()`` returns the ``.tar.gz``."""

    def __init__(self, disk: Path, fmt: str, output: Path, tmp_dir: Path) -> None:
        self.disk = disk
        self.fmt = fmt
        self.output = output
        self.tmp_dir = tmp_dir
        self.sock = tmp_dir / "qemu-img.sock"
        self.gzip_cmd = "pigz" if shutil.which("pigz") else "gzip"
        self.stack = contextlib.ExitStack()

    def _serve(self, dev: Path, partition: int | None) -> None:
        dev.mkdir(parents=True, exist_ok=True)
        self.stack.enter_context(run.spawn(nbdfuse_argv(dev, self.sock, partition), stderr=None))
        self.stack.callback(_fuse_unmount, dev)  # before nbdfuse is signalled
        wait_until((dev / "nbd").is_file, f"nbdfuse {dev}")

    def mount_part(self, part: int, mountpoint: Path) -> None:
        mountpoint.mkdir(parents=True, exist_ok=True)
        dev = self.tmp_dir / f"p{part}"
        self._serve(dev, part)
        run.run(fuse2fs_argv(dev, mountpoint))
        self.stack.callback(_fuse_unmount, mountpoint)

    def _cleanup(self) -> None:
        """The script's ``trap cleanup EXIT``: unmount p*/, disk/, boot/; remove TMP_DIR."""
        for dev in [*sorted(self.tmp_dir.glob("p*")), self.tmp_dir / "disk", self.tmp_dir / "boot"]:
            if dev.is_dir():
                _fuse_unmount(dev)

    def run(self, *, detect_bls_boot: bool = True, root_partition: int = 1) -> Path:
        tarfile = tar_name(self.output)
        root = self.tmp_dir / "root"
        with self.stack:
            run.run(["sync", "-f", self.disk])
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            self.stack.callback(shutil.rmtree, self.tmp_dir, True)
            self.stack.enter_context(
                run.spawn(qemu_nbd_argv(self.sock, self.fmt, self.disk), stderr=None)
            )
            self.stack.callback(self._cleanup)
            wait_until(self.sock.exists, "qemu-nbd socket")  # packer-maas: sleep 5
            root.mkdir()
            self.mount_part(root_partition, root)
            machine_id = root / "etc/machine-id"
            if machine_id.is_file():
                machine_id.write_bytes(b"")
            if (root / "var/lib/cloud/instance").is_file():  # false for cloud-init's symlink
                (root / "var/log/cloud-init*.log").unlink(missing_ok=True)  # quoted: literal
                (root / "var/lib/cloud/instance").unlink(missing_ok=True)
                shutil.rmtree(root / "var/lib/cloud/instances", ignore_errors=True)
            # no curtin/ directory beside ubuntu-cloudimg.pkr.hcl and no CURTIN_HOOKS: no copy
            run.run(tar_create_argv(tarfile, root))
            if detect_bls_boot:
                self._serve(self.tmp_dir / "disk", None)
                parted = run.run(parted_argv(self.tmp_dir / "disk")).stdout.decode()
                boot = bls_boot_partition(parted)
                if boot is not None:
                    self.mount_part(boot, self.tmp_dir / "boot")
                    run.run(tar_append_boot_argv(tarfile, self.tmp_dir))
            run.run(compress_argv(tarfile, self.gzip_cmd))
            run.run(["sync"])
            _fuse_unmount(root)  # "fusermount -z -u ROOT_MOUNT"
        return self.output


def packer_maas_export(disk: Path, fmt: str, output: Path, tmp_dir: Path) -> Path:
    """packer-maas's post-processing of ``disk`` into ``output`` (``*.tar.gz``)."""
    return PackerMaasPostProcessor(disk, fmt, output, tmp_dir).run()


def guestfs_ready() -> str | None:
    """Why ``virt-tar-out`` cannot run here, or None when it is installed."""
    if shutil.which("virt-tar-out") is None:
        return "virt-tar-out not installed (Debian package guestfish)"
    return None


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        yield fd
    finally:
        os.close(fd)


def virt_tar_out_export(disk: Path, output: Path, *, level: int | None = None) -> Path:
    """``virt-tar-out -a DISK / - | pigz [-N] > OUTPUT`` with libguestfs forced to TCG."""
    pigz = ["pigz"] if level is None else ["pigz", f"-{level}"]
    with contextlib.ExitStack() as stack:
        fd = stack.enter_context(_opened(output))
        vto = stack.enter_context(
            run.spawn(virt_tar_out_argv(disk), env=GUESTFS_ENV, stdout=subprocess.PIPE)
        )
        gz = stack.enter_context(run.spawn(pigz, stdin=vto.stdout, stdout=fd, stderr=None))
        assert vto.stdout is not None and vto.stderr is not None
        vto.stdout.close()  # pigz holds the read end now
        err = vto.stderr.read()
        codes = (vto.wait(), gz.wait())
    if codes != (0, 0):
        output.unlink(missing_ok=True)
        raise CommandError(virt_tar_out_argv(disk), codes[0], err.decode("utf-8", "replace"))
    return output
