"""The build VM's qemu process: its command line, its life, and control over QMP.

:func:`qemu_argv` is pure (a :class:`MachineSpec` in, an argv out) so the command
line is unit-tested. :class:`Machine` is the context manager that runs it through
``run.spawn`` (parent-death signal), with the serial console always written to a
log file, a QMP socket for ACPI powerdown/quit, SSH forwarded from a free port on
127.0.0.1 only, and VNC (``--vnc``) bound to 127.0.0.1 too. Leaving the block
always ends qemu: QMP quit, then terminate, then kill. Failures raise
MachineError with the serial console's last lines. The accelerator is chosen by
:func:`imagebuilder.vm.accel.probe_accel`, re-exported here. This module knows
nothing about SSH or what runs inside the guest.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import run
from ..config.tree import Config, Firmware
from ..errors import MachineError, host_package_hint
from ..families.catalogue import QEMU_ARCH
from .accel import cpu_model, probe_accel

__all__ = [
    "Machine",
    "MachineSpec",
    "boot_timeout",
    "poweroff_timeout",
    "prepare_firmware",
    "probe_accel",
]

#: (code, vars template) per arch for UEFI.
UEFI_FIRMWARE = {
    "amd64": (Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/usr/share/OVMF/OVMF_VARS_4M.fd")),
    "arm64": (Path("/usr/share/AAVMF/AAVMF_CODE.fd"), Path("/usr/share/AAVMF/AAVMF_VARS.fd")),
}
FIRMWARE_PACKAGE = {"amd64": "ovmf", "arm64": "qemu-efi-aarch64"}
#: qemu's virt machine wants both pflash images exactly this size.
AARCH64_PFLASH_SIZE = 64 << 20
#: Seconds to reach SSH (and to finish cloud-init), and to power off, per accelerator.
BOOT_TIMEOUT = {"kvm": 300.0, "tcg": 900.0}
POWEROFF_TIMEOUT = {"kvm": 60.0, "tcg": 180.0}
#: How much slower than an x86 guest under TCG a guest of this arch is on an x86 host
#: (measured here: the bookworm build VM stages and export took 200-330 s for arm64 and
#: ~150 s for amd64, 1.3-2.1x; the timeouts themselves are several times a normal boot).
TCG_SLOWDOWN = {"arm64": 2.0}
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


def _scale(accel: str, arch: str) -> float:
    return TCG_SLOWDOWN.get(arch, 1.0) if accel == "tcg" else 1.0


def boot_timeout(accel: str, override: float | None = None, *, arch: str = "amd64") -> float:
    """Seconds to wait for SSH and cloud-init: ``override`` (--timeout) or the default."""
    if override is not None:
        return override
    return BOOT_TIMEOUT[accel] * _scale(accel, arch)


def poweroff_timeout(accel: str, *, arch: str = "amd64") -> float:
    """Seconds the guest gets to power itself off."""
    return POWEROFF_TIMEOUT[accel] * _scale(accel, arch)


@dataclass(frozen=True)
class MachineSpec:
    """Everything the qemu command line depends on."""

    arch: str  # "amd64" | "arm64"
    accel: str  # "kvm" | "tcg"
    disk: Path
    serial_log: Path
    qmp_socket: Path
    ssh_port: int
    memory: int = 2048  # MiB
    cpus: int = 2
    firmware: Firmware = Firmware.UEFI
    firmware_code: Path | None = None  # read-only pflash (UEFI)
    firmware_vars: Path | None = None  # this build's writable copy of the vars store
    disk_format: str = "qcow2"
    seed: Path | None = None
    vnc: bool = False
    name: str = "imagebuilder"
    extra: tuple[str, ...] = field(default=())
    #: Appended to the user netdev (e.g. ",restrict=on,guestfwd=..."): no package source.
    net_options: str = ""
    mac: str | None = None  # the NIC's MAC address (qemu picks one when unset)


def _opt(path: Path) -> str:
    """A path inside a -drive/-chardev option: commas are doubled."""
    return str(path).replace(",", ",,")


def qemu_argv(spec: MachineSpec) -> list[str]:
    """The qemu command line for ``spec`` (no I/O)."""
    if spec.arch not in QEMU_ARCH:
        raise MachineError(f"no build VM for architecture {spec.arch!r}")
    machine = "q35" if spec.arch == "amd64" else "virt,gic-version=max"
    argv = [
        f"qemu-system-{QEMU_ARCH[spec.arch]}", "-name", spec.name, "-nodefaults",
        "-no-user-config", "-machine", machine, "-accel", spec.accel,
        "-cpu", cpu_model(spec.arch, spec.accel), "-smp", str(spec.cpus), "-m", str(spec.memory),
    ]  # fmt: skip
    if spec.arch == "arm64" or spec.firmware is Firmware.UEFI:
        if spec.firmware_code is None or spec.firmware_vars is None:
            raise MachineError("UEFI firmware files were not prepared (prepare_firmware)")
        argv += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={_opt(spec.firmware_code)}",
            "-drive", f"if=pflash,format=raw,unit=1,file={_opt(spec.firmware_vars)}",
        ]  # fmt: skip
    argv += [
        "-drive", f"if=none,id=disk0,format={spec.disk_format},file={_opt(spec.disk)},"
        "cache=unsafe,discard=unmap",
        "-device", "virtio-blk-pci,drive=disk0,bootindex=1",
    ]  # fmt: skip
    if spec.seed is not None:
        argv += [
            "-drive", f"if=none,id=seed0,format=raw,readonly=on,file={_opt(spec.seed)}",
            "-device", "virtio-blk-pci,drive=seed0",
        ]  # fmt: skip
    argv += [
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22{spec.net_options}",
        "-device", "virtio-net-pci,netdev=net0" + (f",mac={spec.mac}" if spec.mac else ""),
        "-device", "virtio-rng-pci",
        "-serial", f"file:{spec.serial_log}",
        "-qmp", f"unix:{_opt(spec.qmp_socket)},server=on,wait=off",
    ]  # fmt: skip
    if spec.vnc:
        gpu = "VGA" if spec.arch == "amd64" else "virtio-gpu-pci"
        argv += ["-device", gpu, "-vnc", "127.0.0.1:0,to=99"]
    else:
        argv += ["-display", "none"]
    return argv + list(spec.extra)


def prepare_firmware(arch: str, firmware: Firmware, build_dir: Path) -> tuple[Path | None, ...]:
    """(code, vars) for UEFI: vars copied into ``build_dir`` (AAVMF padded); BIOS: (None, None)."""
    if arch == "amd64" and firmware is Firmware.BIOS:
        return (None, None)
    code, template = UEFI_FIRMWARE[arch]
    for path in (code, template):
        if not path.is_file():
            raise MachineError(
                f"UEFI firmware {path} not found",
                hint=host_package_hint(FIRMWARE_PACKAGE[arch])
                + (" (or use --firmware bios)" if arch == "amd64" else ""),
            )
    vars_copy = build_dir / f"efivars-{arch}.fd"
    shutil.copyfile(template, vars_copy)
    if arch == "arm64":
        if code.stat().st_size != AARCH64_PFLASH_SIZE:
            padded = build_dir / "efi-code-arm64.fd"
            shutil.copyfile(code, padded)
            code = padded
        for p in (code, vars_copy):
            if p.parent == build_dir:
                with open(p, "r+b") as fh:
                    fh.truncate(AARCH64_PFLASH_SIZE)
    return (code, vars_copy)


def build_spec(
    cfg: Config,
    *,
    accel: str,
    disk: Path,
    serial_log: Path,
    qmp_socket: Path,
    firmware: tuple[Path | None, ...],
    seed: Path | None,
) -> MachineSpec:
    """The build VM ``cfg`` asks for (machine options, ``prepare_firmware``'s files, a free
    loopback SSH port); the installer and the provisioning VM both start from it."""
    code, vars_ = firmware
    return MachineSpec(
        arch=cfg.arch, accel=accel, disk=disk, serial_log=serial_log, qmp_socket=qmp_socket,
        ssh_port=free_port(), memory=cfg.machine.memory, cpus=cfg.machine.cpus,
        firmware=cfg.machine.firmware, firmware_code=code, firmware_vars=vars_, seed=seed,
        vnc=cfg.machine.vnc, name=f"imagebuilder-{cfg.series}",
    )  # fmt: skip


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
