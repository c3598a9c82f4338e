"""SSH to the build VM with paramiko: pinned host key, streamed output, reconnects.

:class:`Guest` logs in as the build user with the per-build client key and accepts
only the per-build host key (no trust on first use: any other key is rejected).
:meth:`Guest.wait_ready` polls every quarter second with short timeouts while
checking that qemu still runs, so it returns within about a second of sshd taking
our key. :meth:`Guest.run` streams output line by line into the build log (and
the ``imagebuilder.guest`` logger, shown with ``-v``) and returns the exit status;
a dropped connection raises :class:`Disconnected`. This module knows nothing
about qemu beyond the liveness callback, nor about what the commands do.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import select
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

import paramiko

from ..errors import SSHError
from .keys import BuildKeys

guest_log = logging.getLogger("imagebuilder.guest")
POLL_INTERVAL = 0.25


class Disconnected(SSHError):
    """The connection dropped before the command reported an exit status."""


class BuildLog:
    """build.log: every command and every line of its output, as it arrives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Open for the whole build; close() ends it.
        self._fh: IO[str] = open(path, "a", encoding="utf-8", errors="replace", buffering=1)  # noqa: SIM115
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    def close(self) -> None:
        with self._lock:
            self._fh.close()


@dataclass(frozen=True)
class Result:
    status: int  # exit status; -1 when the command died of a signal
    tail: tuple[str, ...]  # its last output lines

    def tail_text(self) -> str:
        return "\n".join(self.tail)


def command_line(
    command: str | Sequence[str], *, sudo: bool, env: Mapping[str, str] | None = None
) -> str:
    """The remote command string: ``command`` (a shell snippet or an argv) as root with env."""
    argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
    if env:
        argv = ["env", *(f"{k}={v}" for k, v in sorted(env.items())), *argv]
    if sudo:
        argv = ["sudo", "-n", "-H", "--", *argv]
    return shlex.join(argv)


class Guest:
    """An SSH session with the build VM."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        user: str,
        keys: BuildKeys,
        log: BuildLog,
        alive: Callable[[], None] = lambda: None,
    ) -> None:
        self.host, self.port, self.user, self.keys, self.log = host, port, user, keys, log
        self.alive = alive  # raises (e.g. MachineError) when the VM is gone
        self._client: paramiko.SSHClient | None = None
        self._pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(keys.client.private_openssh))
        self.host_key = paramiko.Ed25519Key(data=keys.host.public_blob)

    # ---- connecting -----------------------------------------------------------------
    def _connect(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        client.get_host_keys().add(name, self.host_key.get_name(), self.host_key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                self.host, self.port, username=self.user, pkey=self._pkey,
                timeout=3.0, banner_timeout=20.0, auth_timeout=20.0, channel_timeout=20.0,
                allow_agent=False, look_for_keys=False,
                disabled_algorithms={"keys": ["rsa-sha2-256", "rsa-sha2-512", "ssh-rsa"]},
            )  # fmt: skip
        except BaseException:
            client.close()
            raise
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(5)
        return client

    def wait_ready(self, timeout: float) -> float:
        """Poll until we are logged in; returns the seconds it took."""
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # refusals are expected
        self.close()
        start = time.monotonic()
        last = "no answer yet"
        while True:
            self.alive()
            try:
                self._client = self._connect()
                self.log.write(
                    f"ssh: logged in as {self.user} after {time.monotonic() - start:.1f} s"
                )
                return time.monotonic() - start
            except paramiko.BadHostKeyException:
                last = "the guest presented a different host key than the one we installed"
            except paramiko.AuthenticationException:
                last = f"the guest refused our key for {self.user} (cloud-init not done?)"
            except (paramiko.SSHException, EOFError, OSError) as exc:
                last = str(exc) or type(exc).__name__
                if "known_hosts" in last:
                    last = "the guest offered no ed25519 host key (is our seed applied?)"
            if time.monotonic() - start > timeout:
                raise SSHError(
                    f"no SSH login to the build VM within {timeout:.0f} s: {last}",
                    hint="see the serial console below; raise --timeout if the guest is slow",
                )
            time.sleep(POLL_INTERVAL)

    @property
    def transport(self) -> paramiko.Transport:
        t = self._client.get_transport() if self._client is not None else None
        if t is None or not t.is_active():
            raise Disconnected("not connected to the build VM")
        return t

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # ---- commands ----------------------------------------------------------------------
    def run(
        self,
        command: str | Sequence[str],
        *,
        sudo: bool = True,
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
        quiet: bool = False,
        tail: int = 30,
    ) -> Result:
        """Run ``command`` in the guest, streaming output; returns status and tail."""
        cmdline = command_line(command, sudo=sudo, env=env)
        self.log.write(f"$ {cmdline}")
        chan = self.transport.open_session(timeout=20.0)
        lines: collections.deque[str] = collections.deque(maxlen=tail)
        try:
            chan.set_combine_stderr(True)
            chan.exec_command(cmdline)
            if input:
                chan.sendall(input)
            chan.shutdown_write()
            chan.settimeout(0.5)
            buf = b""
            while True:
                try:
                    data = chan.recv(65536)
                except TimeoutError:
                    self.alive()
                    if not self.transport.is_active():
                        break
                    continue
                if not data:
                    break
                buf += data
                *complete, buf = buf.split(b"\n")
                for raw in complete:
                    self._line(raw, lines, quiet)
            if buf:
                self._line(buf, lines, quiet)
            deadline = time.monotonic() + 10.0
            while not chan.exit_status_ready() and time.monotonic() < deadline:
                self.alive()
                time.sleep(0.05)
            status = chan.recv_exit_status() if chan.exit_status_ready() else -1
            t = self._client.get_transport() if self._client is not None else None
            if status == -1 and (t is None or not t.is_active()):
                raise Disconnected(
                    f"the connection to the build VM dropped during: {cmdline}",
                    details="\n".join(lines),
                )
        finally:
            chan.close()
        self.log.write(f"exit status {status}")
        return Result(status, tuple(lines))

    def _line(self, raw: bytes, lines: collections.deque[str], quiet: bool) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r").split("\r")[-1]
        lines.append(text)
        if not quiet:
            self.log.write(f"| {text}")
            guest_log.info("%s", text)

    def check(
        self,
        command: str | Sequence[str],
        *,
        sudo: bool = True,
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
    ) -> Result:
        """:meth:`run` that raises SSHError on a non-zero exit."""
        result = self.run(command, sudo=sudo, env=env, input=input)
        if result.status != 0:
            raise SSHError(
                f"command in the build VM failed (exit {result.status}): "
                f"{command if isinstance(command, str) else shlex.join(command)}",
                hint=f"see {self.log.path}",
                details=result.tail_text(),
            )
        return result

    def output(self, command: str | Sequence[str], *, sudo: bool = False) -> str:
        """Run quietly and return the output (for small queries)."""
        result = self.run(command, sudo=sudo, quiet=True, tail=1000)
        return "\n".join(result.tail).strip() if result.status == 0 else ""

    def put(self, data: bytes, remote: str, *, mode: int = 0o644) -> None:
        """Write ``data`` to ``remote`` (as the build user) through a plain exec channel."""
        q = shlex.quote(remote)
        self.check(f"umask 077; cat > {q} && chmod {mode:o} {q}", sudo=False, input=data)

    def put_file(self, local: Path, remote: str, *, mode: int | None = None) -> None:
        self.put(
            local.read_bytes(),
            remote,
            mode=mode if mode is not None else local.stat().st_mode & 0o777,
        )

    def boot_id(self) -> str:
        return self.output("cat /proc/sys/kernel/random/boot_id")

    def shutdown_pending(self) -> bool:
        """True if systemd in the guest is stopping or has a reboot/poweroff job queued."""
        try:
            state = self.output(
                "systemctl is-system-running || true; systemctl list-jobs --no-legend || true"
            )
        except Disconnected:
            return True
        return "stopping" in state or any(
            t in state for t in ("reboot.target", "poweroff.target", "halt.target")
        )

    def wait_rebooted(self, old_boot_id: str, timeout: float) -> float:
        """Wait for SSH on a new boot (a boot id other than ``old_boot_id``)."""
        start = time.monotonic()
        while True:
            self.close()
            remaining = timeout - (time.monotonic() - start)
            self.wait_ready(max(remaining, 1.0))
            try:
                if self.boot_id() not in ("", old_boot_id):
                    return time.monotonic() - start
                if not self.shutdown_pending():
                    raise SSHError(
                        "the SSH connection dropped but the build VM did not reboot",
                        hint=f"see {self.log.path} and the serial console",
                    )
            except Disconnected:
                pass
            if time.monotonic() - start > timeout:
                raise SSHError(f"the build VM did not come back within {timeout:.0f} s")
            time.sleep(1.0)

    # ---- a person at the keyboard -------------------------------------------------------
    def interactive(
        self, *, stdin: IO[bytes] | None = None, stdout: IO[bytes] | None = None
    ) -> int:
        """A login shell with a pty on this terminal; returns its exit status."""
        stdin = stdin or sys.stdin.buffer
        stdout = stdout or sys.stdout.buffer
        fd = stdin.fileno()
        is_tty = os.isatty(fd)
        size = os.get_terminal_size(fd) if is_tty else os.terminal_size((80, 24))
        chan = self.transport.open_session(timeout=20.0)
        chan.get_pty(term=os.environ.get("TERM", "xterm"), width=size.columns, height=size.lines)
        chan.invoke_shell()
        with contextlib.ExitStack() as stack:
            if is_tty:
                import termios
                import tty

                saved = termios.tcgetattr(fd)
                stack.callback(termios.tcsetattr, fd, termios.TCSADRAIN, saved)
                tty.setraw(fd)

                def resize(signum: int, frame: FrameType | None) -> None:
                    s = os.get_terminal_size(fd)
                    chan.resize_pty(width=s.columns, height=s.lines)

                old = signal.signal(signal.SIGWINCH, resize)
                stack.callback(signal.signal, signal.SIGWINCH, old)
            stdin_open = True
            while True:
                cfd = chan.fileno()
                ready, _, _ = select.select([cfd, fd] if stdin_open else [cfd], [], [], 1.0)
                self.alive()
                if cfd in ready:
                    data = chan.recv(65536)
                    if not data:
                        break
                    stdout.write(data)
                    stdout.flush()
                if stdin_open and fd in ready:
                    data = os.read(fd, 4096)
                    if data:
                        chan.sendall(data)
                    else:
                        stdin_open = False
                        chan.shutdown_write()
                if chan.exit_status_ready() and not chan.recv_ready():
                    break
        status = chan.recv_exit_status()
        chan.close()
        return status
