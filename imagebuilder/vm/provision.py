"""The build VM recipe: boot the base, run the named steps over SSH, power off clean.

``provision()`` makes ``disk.qcow2`` (an overlay backed by the cached base,
resized), a per-build seed ISO and keys, picks the accelerator, boots qemu, waits
for SSH and runs the steps of :func:`imagebuilder.vm.steps.plan` (wait-cloud-init, setup, customize,
kernel, hygiene), each named, timed and logged to ``build.log``; the serial
console is always in ``serial.log``. Whatever happens (errors, Ctrl-C, SIGTERM
turned into KeyboardInterrupt), qemu, the HTTP server and the seed/firmware/key
files are gone when it returns. ``shell()`` boots the same way for a person.
This module decides what runs in the guest; it does not read the finished disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shlex
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import run
from ..config.tree import Config
from ..errors import MachineError, ProvisionError, SSHError
from ..progress import Progress
from ..sources.basedisk import BaseDisk
from . import httpserve, qemu, qemu_cmdline, timeouts, uefi
from .buildenv import build_env
from .keys import BuildKeys
from .seed import write_seed
from .ssh import BuildLog, Guest
from .steps import BUILD_USER, Session, plan, step_wait_cloud_init, write_proxy_file


def size_bytes(size: str) -> int:
    """``8G``, ``20480M``, ``1.5T`` (binary units, as qemu-img reads them) in bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", size.strip().upper())
    if not m:
        raise ValueError(f"not a size: {size!r}")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " "))


def make_overlay(base: BaseDisk, disk: Path, size: str, log: BuildLog) -> None:
    """``disk``: a qcow2 backed by the base (never written), grown to ``size``."""
    log.write(f"overlay {disk} backed by {base.path} ({base.format})")
    run.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            base.format,
            "-b",
            base.path.resolve(),
            disk,
        ]
    )
    info = json.loads(run.run(["qemu-img", "info", "--output=json", disk]).stdout)
    if int(info["virtual-size"]) < size_bytes(size):
        run.run(["qemu-img", "resize", "-q", disk, size])


@contextlib.contextmanager
def build_vm(
    base: BaseDisk,
    cfg: Config,
    build_dir: Path,
    progress: Progress,
    log: BuildLog,
    *,
    spec_changes: Mapping[str, Any] | None = None,
) -> Iterator[Session]:
    """Boot the build VM and log in; everything is torn down when the block exits.

    ``spec_changes``: MachineSpec fields to change (the deploy test's extra disk and network).
    """
    build_id = uuid.uuid4().hex[:12]
    keys = BuildKeys.generate(build_id)
    disk = build_dir / "disk.qcow2"
    with contextlib.ExitStack() as stack:
        for name in (
            "seed.iso",
            f"efivars-{cfg.arch}.fd",
            "efi-code-arm64.fd",
            "id_ed25519",
            "known_hosts",
        ):
            stack.callback((build_dir / name).unlink, missing_ok=True)
        if not disk.exists():
            make_overlay(base, disk, cfg.machine.disk_size, log)
        seed = write_seed(
            build_dir / "seed.iso", keys, user=BUILD_USER, instance_id=f"imagebuilder-{build_id}"
        )
        accel = qemu.probe_accel(
            cfg.arch, progress, requested=cfg.machine.accel, cache_dir=cfg.source.cache_dir
        )
        timeout = timeouts.boot_timeout(accel, cfg.machine.timeout, arch=cfg.arch)
        firmware = uefi.prepare_firmware(cfg.arch, cfg.machine.firmware, build_dir)
        http_url = None
        if cfg.provision.http_dir is not None:
            port = stack.enter_context(httpserve.serve(cfg.provision.http_dir, log=log.write))
            http_url = httpserve.guest_url(port)
            log.write(f"http: serving {cfg.provision.http_dir} on 127.0.0.1:{port} as {http_url}")
        qmp_path = stack.enter_context(qemu.short_socket_path(build_dir / "qmp.sock"))
        console = (lambda line: progress.info(f"console: {line}")) if cfg.machine.console else None
        for attempt in range(3):
            spec = qemu_cmdline.build_spec(
                cfg,
                accel=accel,
                disk=disk,
                serial_log=build_dir / "serial.log",
                qmp_socket=qmp_path,
                firmware=firmware,
                seed=seed,
            )
            spec = dataclasses.replace(spec, **(spec_changes or {}))
            log.write(f"qemu: {shlex.join(qemu_cmdline.qemu_argv(spec))}")
            machine = qemu.Machine(spec, stderr_log=build_dir / "qemu.log", console=console)
            try:
                stack.enter_context(machine)
                break
            except MachineError:
                if attempt == 2 or "forward" not in machine.qemu_errors():
                    raise
        if cfg.machine.vnc:
            progress.info(f"VNC display on {machine.vnc_address()}")
        guest = Guest(
            host="127.0.0.1",
            port=spec.ssh_port,
            user=BUILD_USER,
            keys=keys,
            log=log,
            alive=machine.check,
        )
        stack.callback(guest.close)
        epoch = cfg.output.source_date_epoch
        env = build_env(cfg, base.date if epoch is None else epoch)
        session = Session(cfg, base, machine, guest, log, progress, accel, timeout, env, http_url)
        with progress.stage("boot", f"{accel}, {cfg.machine.firmware.value}; waiting for SSH"):
            try:
                took = guest.wait_ready(timeout)
            except SSHError as exc:
                raise machine.error(exc.message, exc.hint) from None
        log.write(f"ssh ready {took:.1f} s after qemu started")
        yield session


def _power_off(s: Session) -> None:
    """Wait for the guest's own poweroff; ACPI over QMP, then kill, as fallbacks."""
    s.guest.close()
    wait = timeouts.poweroff_timeout(s.accel, arch=s.cfg.arch)
    if s.machine.wait_exit(wait):
        return
    s.progress.warning("the build VM did not power off by itself; pressing the ACPI power button")
    if not s.machine.powerdown(wait):
        raise s.machine.error(
            f"the build VM did not power off within {2 * wait:.0f} s", "see the serial console"
        )


def _debug_shell(s: Session, exc: ProvisionError | SSHError) -> None:
    s.progress.warning(f"{exc.message}; opening a shell on the build VM (exit it to clean up)")
    for line in exc.details.splitlines():
        s.progress.info(f"| {line}")
    with contextlib.suppress(SSHError, OSError):
        s.guest.wait_ready(30.0)
        s.guest.interactive()


def provision(
    base: BaseDisk, cfg: Config, build_dir: Path, progress: Progress, *, debug_shell: bool = False
) -> Path:
    """Boot ``base``, run the steps, power off; returns build_dir/disk.qcow2."""
    log = BuildLog(build_dir / "build.log")
    try:
        with build_vm(base, cfg, build_dir, progress, log) as s:
            for step in plan(base, cfg):
                log.write(f"==> step {step.name}")
                with progress.stage(step.name, step.detail):
                    try:
                        step.run(s)
                    except (ProvisionError, SSHError) as exc:
                        if debug_shell:
                            _debug_shell(s, exc)
                        raise
            with progress.stage("poweroff"):
                _power_off(s)
    finally:
        log.close()
    return build_dir / "disk.qcow2"


def shell(base: BaseDisk, cfg: Config, build_dir: Path, progress: Progress) -> int:
    """Boot the build VM and open an interactive SSH session; returns the shell's status."""
    log = BuildLog(build_dir / "build.log")
    try:
        with build_vm(base, cfg, build_dir, progress, log) as s:
            with progress.stage("wait-cloud-init"):
                step_wait_cloud_init(s)
            write_proxy_file(s)
            identity, known = s.guest.keys.write_client_files(build_dir, "127.0.0.1", s.guest.port)
            progress.info(
                f"also: ssh -i {identity} -o UserKnownHostsFile={known} -p {s.guest.port} "
                f"{BUILD_USER}@127.0.0.1" + (f"   files: {s.http_url}" if s.http_url else "")
            )
            status = s.guest.interactive()
            s.machine.quit()
            return status
    finally:
        log.close()


__all__ = ["BUILD_USER", "build_vm", "make_overlay", "provision", "shell", "size_bytes"]
