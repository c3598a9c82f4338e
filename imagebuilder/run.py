"""One way to run host programs.

Every subprocess imagebuilder starts goes through :func:`run` (short commands) or
:func:`spawn` (helper processes that live while a context manager is open). Both log
the command line with ``shlex.join``, turn "not installed" into
:class:`~imagebuilder.errors.ToolNotFoundError` naming the Debian package, and raise
:class:`~imagebuilder.errors.CommandError` with argv, exit code and stderr tail.
This module knows nothing about images; it must not print to the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .errors import CommandError, ToolNotFoundError

log = logging.getLogger("imagebuilder.run")

#: Which Debian package provides a host program, for "not found" hints.
PACKAGES: dict[str, str] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-system-aarch64": "qemu-system-arm",
    "qemu-img": "qemu-utils",
    "qemu-nbd": "qemu-utils",
    "qemu-storage-daemon": "qemu-system-common",
    "nbdkit": "nbdkit",
    "nbdfuse": "nbdfuse",
    "nbdcopy": "libnbd-bin",
    "nbdinfo": "libnbd-bin",
    "fuse2fs": "fuse2fs",
    "mmdebstrap": "mmdebstrap",
    "gpgv": "gpgv",
    "gpg": "gpg",
    "mkfs.ext4": "e2fsprogs",
    "mke2fs": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "sgdisk": "gdisk",
    "sfdisk": "fdisk",
    "losetup": "mount",
    "mount": "mount",
    "umount": "mount",
    "pigz": "pigz",
    "virt-tar-out": "guestfish",
    "debugfs": "e2fsprogs",
    "unshare": "util-linux",
    "mcopy": "mtools",
    "mdir": "mtools",
    "partx": "util-linux",
    "fstrim": "util-linux",
    "grub-install": "grub2-common",
}


def which(tool: str, package: str | None = None) -> str:
    """Return the full path of ``tool`` or raise ToolNotFoundError naming ``package``
    (else the host package :data:`PACKAGES` knows for it)."""
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if not found:
        raise ToolNotFoundError(tool, package or PACKAGES.get(tool))
    return found


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A predictable environment for host tools: C locale, no stray tool settings."""
    keep = ("PATH", "HOME", "TMPDIR", "USER", "LOGNAME", "TERM")
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("LIBGUESTFS_")}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["LC_ALL"] = "C.UTF-8"
    if extra:
        env.update(extra)
    return env


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    capture: bool = True,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    stdout: int | IO[Any] | None = None,
    hint: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command to completion.

    stdout and stderr are captured (``capture``) unless ``stdout`` is given. On a
    non-zero exit with ``check`` a CommandError carries the stderr tail.
    """
    args = [os.fspath(a) for a in argv]
    args[0] = which(args[0]) if "/" not in args[0] else args[0]
    log.debug("run: %s", shlex.join(args))
    try:
        proc = subprocess.run(
            args,
            input=input,
            stdout=stdout if stdout is not None else (subprocess.PIPE if capture else None),
            stderr=subprocess.PIPE if capture else None,
            env=child_env(env),
            cwd=cwd,
            timeout=timeout,
            check=False,
            start_new_session=False,
        )
    except FileNotFoundError as exc:
        raise ToolNotFoundError(args[0], PACKAGES.get(Path(args[0]).name)) from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(args, -1, f"timed out after {timeout} s", hint=hint) from exc
    if check and proc.returncode != 0:
        err = (proc.stderr or b"").decode("utf-8", "replace")
        raise CommandError(args, proc.returncode, err, hint=hint)
    return proc


def stop_process(proc: subprocess.Popen[Any], *, grace: float = 5.0) -> None:
    """terminate -> wait -> kill, for a process started by :func:`spawn`."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask the kernel to SIGKILL the child when imagebuilder dies (Linux prctl)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:
        pass


@contextlib.contextmanager
def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    stdout: int | IO[Any] | None = subprocess.DEVNULL,
    stderr: int | IO[Any] | None = subprocess.PIPE,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    grace: float = 5.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a helper process that is stopped (and reaped) when the block exits.

    The child gets a parent-death signal, so even a SIGKILL of imagebuilder
    leaves no helper behind.
    """
    args = [os.fspath(a) for a in argv]
    args[0] = which(args[0]) if "/" not in args[0] else args[0]
    log.debug("spawn: %s", shlex.join(args))
    try:
        proc = subprocess.Popen(
            args,
            env=child_env(env),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            preexec_fn=_die_with_parent,
        )
    except FileNotFoundError as exc:
        raise ToolNotFoundError(args[0], PACKAGES.get(Path(args[0]).name)) from exc
    try:
        yield proc
    finally:
        stop_process(proc, grace=grace)
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def stream(argv: Sequence[str | os.PathLike[str]]) -> Iterator[IO[bytes]]:
    """A helper's standard output as a stream (its stderr discarded), stopped on exit."""
    with spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        yield proc.stdout
