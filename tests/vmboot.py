"""Test helper: boot a finished disk image in qemu and wait for a cloud-init-configured login.

Two functions, for tests that must show an output really boots:

- :func:`write_dd` writes a dd image (``.gz``, ``.xz``, ``.bz2`` or raw, sniffed
  by magic) onto a blank, sparse disk file, as curtin's ``dd`` does onto a
  machine's disk (optionally larger than the image, like a real disk).
- :func:`boot_to_login` boots a disk file under TCG with the given firmware
  (``bios``: SeaBIOS, amd64 only; ``uefi``: OVMF or AAVMF) through a qcow2 overlay,
  so the input is never written, with a fresh NoCloud seed written by
  :mod:`imagebuilder.vm.seed`: a unique hostname, a user, and a ``runcmd`` that prints
  a unique marker with the hostname and that user to ``/dev/console`` (the serial
  port: ttyS0 on amd64, ttyAMA0 on arm64). It returns the serial console text once
  both the marker and a ``<hostname> login:`` prompt appeared, which proves the
  disk booted, cloud-init read the seed and ran every stage, and a getty is up.
  On a timeout, a qemu exit or a fatal console line (kernel panic, emergency mode,
  no bootable device...) it raises :class:`BootFailed` with the console's tail.
  qemu is always killed when it returns or raises.

The qemu command line is imagebuilder's own (:func:`imagebuilder.vm.qemu_cmdline.qemu_argv`,
via :class:`imagebuilder.vm.qemu.Machine`), always with ``-accel tcg``. This module
knows nothing about how the image was built.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import re
import secrets
import time
from pathlib import Path
from typing import Literal

from imagebuilder import run
from imagebuilder.config.tree import Firmware
from imagebuilder.errors import MachineError
from imagebuilder.vm import qemu, qemu_cmdline, seed, uefi

__all__ = ["BootFailed", "boot_to_login", "write_dd"]

#: The user the seed creates (locked password: nobody logs in, it only has to exist).
USER = "vmboot"
CHUNK = 1 << 20
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


class BootFailed(AssertionError):
    """The disk did not reach a cloud-init-configured login; the message ends with the console."""


def _open_image(path: Path) -> io.BufferedIOBase:
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if magic == b"\xfd7zXZ\x00":
        return lzma.open(path, "rb")
    if magic[:3] == b"BZh":
        return bz2.open(path, "rb")
    return open(path, "rb")


def write_dd(image: Path, disk: Path, *, disk_size: int | None = None) -> Path:
    """Write the (compressed) dd ``image`` onto a new blank ``disk`` file; return ``disk``.

    The disk is sparse: all-zero 1 MiB blocks are skipped, not written. With
    ``disk_size`` (bytes) the disk is that big (at least the image's size), as a
    machine's disk is usually larger than the image written to it.
    """
    written = 0
    with _open_image(image) as src, open(disk, "wb") as dst:
        while chunk := src.read(CHUNK):
            if chunk.count(0) == len(chunk):
                dst.seek(len(chunk), 1)
            else:
                dst.write(chunk)
            written += len(chunk)
        dst.truncate(max(written, disk_size or 0))
    return disk


def _user_data(marker: str, hostname: str) -> str:
    firmware = "$([ -d /sys/firmware/efi ] && echo uefi || echo bios)"
    report = f'echo "{marker} host=$(hostname) user=$(id -un {USER}) fw={firmware}" > /dev/console'
    doc = {
        "hostname": hostname,
        "users": [{"name": USER, "lock_passwd": True, "shell": "/bin/sh"}],
        "runcmd": [["sh", "-c", report]],
        "final_message": f"{marker} final after $UPTIME s",
    }
    return "#cloud-config\n" + json.dumps(doc, indent=1) + "\n"  # JSON is YAML


def _disk_format(path: Path) -> str:
    info = json.loads(run.run(["qemu-img", "info", "--output=json", path]).stdout)
    return str(info["format"])


def _console(log: Path) -> str:
    return _ANSI.sub("", log.read_bytes().decode("utf-8", "replace")) if log.exists() else ""


def boot_to_login(
    image_raw: Path,
    *,
    arch: str = "amd64",
    firmware: Literal["bios", "uefi"] = "uefi",
    workdir: Path,
    timeout: float = 600.0,
    memory: int = 1024,
    cpus: int = 2,
) -> str:
    """Boot ``image_raw`` (raw or qcow2, never written) and wait for a configured login.

    ``firmware``: ``bios`` (SeaBIOS, amd64 only) or ``uefi`` (OVMF / AAVMF).
    ``workdir`` receives the overlay, seed, firmware vars and ``serial.log`` (kept
    for debugging). Returns the serial console text, escape sequences removed, once
    the seed's marker line ``<marker> host=<hostname> user=vmboot fw=<firmware>``
    (as the guest sees them: ``fw`` from /sys/firmware/efi) and ``<hostname> login:``
    are both on it. Raises :class:`BootFailed` (with the last console lines) on
    timeout, a qemu exit, a fatal boot line, or a marker with other values.
    """
    if firmware == "bios" and arch != "amd64":
        raise ValueError(f"no BIOS firmware for {arch} guests")
    workdir.mkdir(parents=True, exist_ok=True)
    overlay = workdir / "overlay.qcow2"
    overlay.unlink(missing_ok=True)
    src = image_raw.resolve()
    run.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", _disk_format(src),
             "-b", src, overlay])  # fmt: skip
    token = secrets.token_hex(6)
    hostname, marker = f"vmboot-{token}", f"VMBOOT-{token}-CONFIGURED"
    iso = seed.write_iso(
        workdir / "seed.iso",
        {
            "user-data": _user_data(marker, hostname).encode(),
            "meta-data": seed.render_meta_data(
                instance_id=f"vmboot-{token}", hostname=hostname
            ).encode(),
        },
    )
    fw = Firmware(firmware)
    code, vars_ = uefi.prepare_firmware(arch, fw, workdir)
    log = workdir / "serial.log"
    report = re.compile(re.escape(marker) + r" host=(\S*) user=(\S*) fw=(\w+)")
    expected = (hostname, USER, firmware)
    start = time.monotonic()
    with qemu.short_socket_path(workdir / "qmp.sock") as qmp_path:
        spec = qemu_cmdline.MachineSpec(
            arch=arch, accel="tcg", disk=overlay, serial_log=log, qmp_socket=qmp_path,
            ssh_port=qemu_cmdline.free_port(), memory=memory, cpus=cpus, firmware=fw,
            firmware_code=code, firmware_vars=vars_, seed=iso, name=f"vmboot-{firmware}",
        )  # fmt: skip
        machine = qemu.Machine(spec, stderr_log=workdir / "qemu.log")
        with machine:
            while True:
                text = _console(log)
                found = report.search(text)
                if found and found.groups() != expected:
                    raise BootFailed(
                        f"{image_raw.name} ({arch}, {firmware}): cloud-init reported "
                        f"host/user/firmware {found.groups()}, expected {expected}"
                    )
                if found and f"{hostname} login:" in text:
                    return text
                try:
                    machine.check()
                except MachineError as exc:  # qemu died or the console shows a failed boot
                    raise BootFailed(f"{image_raw.name} ({arch}, {firmware}): {exc}\n"
                                     f"{machine.serial_tail(40)}") from None  # fmt: skip
                waited = time.monotonic() - start
                if waited > timeout:
                    missing = "the login prompt" if found else "cloud-init's marker"
                    raise BootFailed(
                        f"{image_raw.name} ({arch}, {firmware}): {missing} not on the serial "
                        f"console within {timeout:.0f} s; last lines:\n{machine.serial_tail(40)}"
                    )
                time.sleep(1.0)
