"""The build VM's qemu process: its life, its console, and control over QMP.

:class:`Machine` is the context manager that runs the command line ``qemu_cmdline``
builds (SSH forwarded from 127.0.0.1 only, VNC on 127.0.0.1 too) through
``run.spawn`` (parent-death signal), with the serial console always written to a
log file and a QMP socket for ACPI powerdown/quit. Leaving the block always ends
qemu: QMP quit, then terminate, then kill. Failures raise MachineError with the
serial console's last lines, at once when the console shows a line of
:data:`FATAL_BOOT`. The accelerator is chosen by
:func:`imagebuilder.vm.accel.probe_accel`, re-exported here. This module builds no
command line and knows nothing about SSH or what runs inside the guest.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .. import run
from ..errors import MachineError
from .accel import probe_accel
from .qemu_cmdline import MachineSpec, qemu_argv

__all__ = ["Machine", "probe_accel"]

#: Serial console lines that mean the guest will never come up: fail now, not at the timeout.
FATAL_BOOT = (
    "Kernel panic - not syncing",
    "Dropping to a shell!",  # initramfs-tools could not find or mount the root
    "You are in emergency mode",
    "Give root password for maintenance",
    "No bootable device",  # SeaBIOS
    "grub rescue>",
    "UEFI Interactive Shell",  # OVMF found nothing to boot
)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|[\x00-\x08\x0b-\x1f\x7f]")


def read_tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a console log, without escape sequences."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    clean = [_ANSI.sub("", ln).rstrip() for ln in text.replace("\r\n", "\n").split("\n")]
    return "\n".join([ln for ln in clean if ln.strip()][-lines:])


class QMP:
    """A minimal QMP client: one command at a time, events skipped."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rwb")
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("QMP connection closed")
            msg: dict[str, Any] = json.loads(line)
            if "event" not in msg:
                return msg

    def execute(self, command: str, **arguments: Any) -> Any:
        req: dict[str, Any] = {"execute": command}
        if arguments:
            req["arguments"] = arguments
        self.file.write(json.dumps(req).encode() + b"\n")
        self.file.flush()
        reply = self._read()
        if "error" in reply:
            raise MachineError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()


class Machine:
    """A running build VM; use as a context manager."""

    def __init__(
        self,
        spec: MachineSpec,
        *,
        stderr_log: Path,
        console: Callable[[str], None] | None = None,
    ) -> None:
        self.spec = spec
        self.stderr_log = stderr_log
        self.console = console
        self.argv = qemu_argv(spec)
        self.proc: subprocess.Popen[bytes] | None = None
        self._qmp: QMP | None = None
        self._stack = contextlib.ExitStack()
        self._stop = threading.Event()
        self._scanned = 0  # serial log bytes already checked for FATAL_BOOT

    # ---- life -------------------------------------------------------------------
    def __enter__(self) -> Machine:
        try:
            self.spec.serial_log.write_bytes(b"")
            self.spec.qmp_socket.unlink(missing_ok=True)
            err = self._stack.enter_context(open(self.stderr_log, "wb"))
            self.proc = self._stack.enter_context(
                run.spawn(self.argv, stdout=subprocess.DEVNULL, stderr=err, grace=5.0)
            )
            self._stack.callback(self.spec.qmp_socket.unlink, missing_ok=True)
            self._connect_qmp()
            if self.console is not None:
                thread = threading.Thread(target=self._tee, name="serial-tee", daemon=True)
                thread.start()
                self._stack.callback(thread.join, 2.0)
                self._stack.callback(self._stop.set)
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def _close(self) -> None:
        if self.alive():
            self.quit()
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        self._stack.close()  # stops the tee thread, then terminate -> kill qemu

    def _connect_qmp(self) -> None:
        deadline = time.monotonic() + 30.0
        while True:
            self.check()
            if self.spec.qmp_socket.exists():
                try:
                    self._qmp = QMP(self.spec.qmp_socket)
                    return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise MachineError("qemu did not open its QMP socket within 30 s")
            time.sleep(0.05)

    def _tee(self) -> None:
        assert self.console is not None
        with open(self.spec.serial_log, "rb") as fh:
            buf = b""
            while not self._stop.is_set():
                chunk = fh.read(65536)
                if not chunk:
                    self._stop.wait(0.2)
                    continue
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for ln in lines:
                    text = _ANSI.sub("", ln.decode("utf-8", "replace")).rstrip()
                    if text:
                        self.console(text)

    # ---- state ------------------------------------------------------------------
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def serial_tail(self, lines: int = 30) -> str:
        return read_tail(self.spec.serial_log, lines)

    def qemu_errors(self) -> str:
        return read_tail(self.stderr_log, 10)

    def check(self) -> None:
        """Raise MachineError if qemu has exited or the console shows a failed boot."""
        if self.proc is not None and self.proc.poll() is not None:
            raise self.error(f"qemu exited unexpectedly (status {self.proc.returncode})")
        fatal = self.fatal_console_line()
        if fatal:
            raise self.error(
                f"the build VM failed to boot: {fatal}",
                hint="the base disk does not boot in this VM; see the serial console below",
            )

    def fatal_console_line(self) -> str | None:
        """The first new serial console line matching :data:`FATAL_BOOT`, if any."""
        try:
            with open(self.spec.serial_log, "rb") as fh:
                fh.seek(max(0, self._scanned - 256))  # a line may straddle two reads
                data = fh.read(4 << 20)
        except OSError:
            return None
        start = max(0, self._scanned - 256)
        self._scanned = start + len(data)
        text = _ANSI.sub("", data.decode("utf-8", "replace"))
        for line in text.splitlines():
            if any(p in line for p in FATAL_BOOT):
                return line.strip()
        return None

    def error(self, message: str, hint: str | None = None) -> MachineError:
        """A MachineError carrying qemu's stderr and the serial console's tail."""
        details = ""
        if self.qemu_errors():
            details += "qemu said:\n" + self.qemu_errors() + "\n"
        details += f"last lines of the serial console ({self.spec.serial_log}):\n"
        details += self.serial_tail() or "(nothing)"
        return MachineError(message, hint=hint or "see the serial console log", details=details)

    # ---- control ----------------------------------------------------------------
    def qmp(self, command: str, **arguments: Any) -> Any:
        if self._qmp is None:
            raise MachineError("no QMP connection to qemu")
        return self._qmp.execute(command, **arguments)

    def vnc_address(self) -> str | None:
        if not self.spec.vnc:
            return None
        info = self.qmp("query-vnc")
        return f"{info.get('host')}:{info.get('service')}" if info else None

    def wait_exit(self, timeout: float) -> bool:
        """Wait for qemu to exit by itself; True if it did."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def powerdown(self, timeout: float) -> bool:
        """ACPI power button over QMP, then wait; True if the guest powered off."""
        if not self.alive():
            return True
        with contextlib.suppress(MachineError, OSError, ConnectionError):
            self.qmp("system_powerdown")
        return self.wait_exit(timeout)

    def quit(self) -> None:
        """Stop qemu now (QMP quit, then terminate/kill when the block exits)."""
        with contextlib.suppress(MachineError, OSError, ConnectionError, ValueError):
            self.qmp("quit")
        self.wait_exit(5.0)


@contextlib.contextmanager
def short_socket_path(preferred: Path) -> Iterator[Path]:
    """``preferred`` if a unix socket path that long works, else one in a short temp dir."""
    if len(str(preferred).encode()) < 100:
        yield preferred
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ib-") as tmp:
        yield Path(tmp) / "qmp.sock"
