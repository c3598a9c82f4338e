"""The deployed machine's first boot: the target disk alone, under the deploy's firmware.

The disk curtin wrote boots as the machine would after MAAS's reboot: the same
firmware (UEFI keeps the NVRAM curtin's efibootmgr wrote, in the same vars file),
the same MAC, and again only the region stand-in reachable. It passes when all
three hold, as MAAS and an operator would judge it:

1. cloud-init's ``modules-final`` finish event with result SUCCESS reached the
   region (what makes MAAS mark the machine Deployed);
2. a ``login:`` prompt on the serial console;
3. an SSH login as the image's cloud-init default user with the key the region's
   metadata served, to the host key the region's user-data installed (pinned).

Any failed cloud-init event, a fatal console line or the deadline ends it with a
DeployError naming the stage. qemu is always gone when it returns. This module
knows nothing about curtin.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ..config.choices import Firmware
from ..errors import DeployError, MachineError, SSHError
from ..progress import Progress
from ..vm import qemu, qemu_cmdline
from ..vm.keys import BuildKeys
from ..vm.ssh import BuildLog, Guest
from .region import Region

_LOGIN = re.compile(rb"^\S+ login: ?$", re.MULTILINE)


@dataclass(frozen=True)
class Booted:
    seconds_to_deployed: float
    seconds_to_login: float
    user: str


def _ended(machine: qemu.Machine, region: Region, started: float, timeout: float) -> None:
    try:
        machine.check()
    except MachineError as exc:
        raise DeployError("boot", exc.message, hint=exc.hint, details=exc.details) from None
    bad = region.failures()
    if bad:
        ev = bad[0]
        raise DeployError(
            "boot",
            f"cloud-init reported {ev.get('name')} {ev.get('result')}: "
            f"{ev.get('description', '')}".rstrip(": "),
            hint="see the serial console log; the image's cloud-init config or datasource",
            details=machine.serial_tail(30),
        )
    if time.monotonic() - started > timeout:
        raise DeployError(
            "boot",
            f"the deployed disk did not finish cloud-init within {timeout:.0f} s",
            hint="see the serial console below",
            details=machine.serial_tail(30),
        )


def boot_target(
    *, disk: Path, firmware: Firmware, firmware_files: tuple[Path | None, ...], mac: str,
    region: Region, region_address: str, keys: BuildKeys, user: str, work: Path,
    progress: Progress, log: BuildLog, timeout: float,
) -> Booted:  # fmt: skip
    """Boot ``disk`` and wait for the three signs above; see the module docstring."""
    code, vars_ = firmware_files
    fwd = f"cmd:busybox nc 127.0.0.1 {region.port}"
    serial = work / "target-serial.log"
    with contextlib.ExitStack() as stack:
        qmp_path = stack.enter_context(qemu.short_socket_path(work / "target-qmp.sock"))
        spec = qemu_cmdline.MachineSpec(
            arch="amd64", accel="tcg", disk=disk, disk_format="raw", serial_log=serial,
            qmp_socket=qmp_path, ssh_port=qemu_cmdline.free_port(), memory=1024, cpus=2,
            firmware=firmware, firmware_code=code, firmware_vars=vars_,
            name=f"imagebuilder-deployed-{firmware.value}", mac=mac,
            net_options=f",restrict=on,guestfwd=tcp:{region_address}:80-{fwd}",
        )  # fmt: skip
        machine = stack.enter_context(qemu.Machine(spec, stderr_log=work / "target-qemu.log"))
        started = time.monotonic()
        deployed_at = login_at = 0.0
        with progress.stage("first-boot", f"{firmware.value}: cloud-init to modules-final"):
            while not (deployed_at and login_at):
                _ended(machine, region, started, timeout)
                if not deployed_at and region.deployed():
                    deployed_at = time.monotonic() - started
                    log.write(f"deploy: modules-final SUCCESS after {deployed_at:.0f} s")
                if not login_at and _LOGIN.search(_serial(serial)):
                    login_at = time.monotonic() - started
                    log.write(f"deploy: login prompt after {login_at:.0f} s")
                time.sleep(1.0)
        guest = Guest(host="127.0.0.1", port=spec.ssh_port, user=user, keys=keys, log=log,
                      alive=machine.check)  # fmt: skip
        stack.callback(guest.close)
        with progress.stage("login", f"ssh {user}@ the deployed machine"):
            try:
                guest.wait_ready(max(60.0, timeout - (time.monotonic() - started)))
                status = guest.run("cloud-init status --long", sudo=False, tail=20)
            except (SSHError, MachineError) as exc:
                raise DeployError(
                    "login", exc.message, hint=exc.hint, details=machine.serial_tail(20)
                ) from None
        if status.status != 0 or not any("status: done" in ln for ln in status.tail):
            raise DeployError(
                "login", "cloud-init status on the deployed machine is not done",
                details=status.tail_text(),
            )  # fmt: skip
        machine.quit()
    return Booted(deployed_at, login_at, user)


def _serial(path: Path) -> bytes:
    try:
        return path.read_bytes().replace(b"\r", b"")
    except OSError:
        return b""
