"""The build VM's qemu command line, built from a :class:`MachineSpec`.

:func:`qemu_argv` is pure (a spec in, an argv out) so the command line is
unit-tested: the machine and accelerator, UEFI pflash drives, the disk and seed on
virtio, user networking with SSH forwarded from 127.0.0.1 only, the serial console
to a file, a QMP socket, VNC on 127.0.0.1 or no display. :func:`build_spec` is the
spec a config asks for, with a free loopback port for SSH (:func:`free_port`).
Nothing here starts qemu or talks to it (``qemu`` does) or prepares the firmware
files (``uefi`` does).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from ..config.tree import Config, Firmware
from ..errors import MachineError
from ..families.catalogue import QEMU_ARCH
from .accel import cpu_model


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
