"""Installer builds (``--layout flat|lvm``): install the OS onto a blank build disk.

:func:`install_disk` makes ``<build_dir>/disk.qcow2`` (blank, ``--disk-size``) and
runs an installer on it with no keystrokes until it powers the VM off:

- Ubuntu: the live-server ISO (:mod:`imagebuilder.installer.isofetch`), its ``casper``
  kernel and initrd booted with ``autoinstall``, the answers on a cidata ISO;
- Debian: the netboot installer from the Debian mirror (:mod:`imagebuilder.installer.netboot`;
  the mirror is first checked for the components it will download,
  :mod:`imagebuilder.installer.udebcheck`), or the kernel and initrd of a netinst ``--iso``;
  the preseed file (:mod:`imagebuilder.installer.preseed`) served by the loopback HTTP server.

The installed disk is handed back as a :class:`BaseDisk` (kind ``installer``);
:func:`imagebuilder.vm.provision.provision` then boots it through its firmware with the
usual NoCloud seed and provisions it over SSH. Installers leave no account a build
could log in with: the build user comes from that seed. qemu, the HTTP server and
the extracted boot files are gone when this returns or fails.
"""

from __future__ import annotations

import contextlib
import shlex
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..config.tree import Config, Layout
from ..errors import ConfigError
from ..progress import Progress
from ..run import run
from ..sources.basedisk import BaseDisk
from ..vm import httpserve, qemu
from . import boot as installer
from . import isofetch, netboot, preseed, udebcheck

__all__ = ["install_disk", "installer_timeout"]

DISK_NAME = "disk.qcow2"


def installer_timeout(accel: str, override: float | None) -> float:
    return override if override is not None else installer.INSTALL_TIMEOUT[accel]


def _blank_disk(path: Path, size: str) -> None:
    run(["qemu-img", "create", "-q", "-f", "qcow2", path, size])


@dataclass(frozen=True)
class _Source:
    """Where the installer came from, for the BaseDisk record (and so the manifest)."""

    origin: str
    sha256: str
    date: int


def _debian_boot(
    cfg: Config, work: Path, progress: Progress, stack: contextlib.ExitStack, log: Path
) -> tuple[installer.InstallerBoot, _Source]:
    """The Debian installer's boot; the preseed is served until ``stack`` closes."""
    rel = cfg.release
    mirror = cfg.source.mirror or rel.archive_mirror(cfg.arch)
    text = preseed.render_preseed(
        suite=cfg.series,
        mirror=mirror,
        layout=cfg.layout,
        firmware=cfg.machine.firmware,
        kernel=cfg.provision.kernel or rel.kernel_package(cfg.arch),
        arch=cfg.arch,
        proxy=cfg.provision.http_proxy,
    )
    www = work / "preseed"
    www.mkdir()
    (www / "preseed.cfg").write_text(text)
    with open(log, "a") as fh:
        fh.write(f"preseed ({len(text)} bytes):\n{text}\n")
    port = stack.enter_context(httpserve.serve(www))
    url = f"{httpserve.guest_url(port)}/preseed.cfg"
    cmdline = preseed.kernel_cmdline(url, cfg.arch)
    if cfg.source.iso is not None:
        iso = isofetch.installer_iso(cfg, progress)
        files = installer.extract_boot_files(iso.path, work, cfg.arch, "debian")
        boot = installer.InstallerBoot(files.kernel, files.initrd, cmdline, cdrom=iso.path)
        return boot, _Source(iso.origin, iso.sha256, iso.date)
    nb = netboot.netboot_files(cfg, progress)
    if not cfg.source.offline:
        checked = udebcheck.check_mirror(mirror, cfg.series, cfg.arch, nb.initrd)
        progress.info(f"the mirror has all {checked} installer components the installer needs")
    boot = installer.InstallerBoot(nb.kernel, nb.initrd, cmdline)
    return boot, _Source(f"{nb.package} {nb.version} ({nb.mirror})", nb.deb_sha256, nb.date)


def _ubuntu_boot(
    cfg: Config, work: Path, progress: Progress, build_id: str
) -> tuple[installer.InstallerBoot, Path, _Source]:
    """Ubuntu's live-server installer: its boot and the autoinstall seed."""
    iso = isofetch.installer_iso(cfg, progress)
    files = installer.extract_boot_files(iso.path, work, cfg.arch, "ubuntu")
    seed = installer.write_autoinstall_seed(
        work / "autoinstall.iso",
        layout=cfg.layout,
        instance_id=f"imagebuilder-install-{build_id}",
        proxy=cfg.provision.http_proxy,
    )
    cmdline = installer.kernel_cmdline(cfg.arch, "ubuntu")
    boot = installer.InstallerBoot(files.kernel, files.initrd, cmdline, cdrom=iso.path)
    return boot, seed, _Source(iso.origin, iso.sha256, iso.date)


def install_disk(cfg: Config, build_dir: Path, progress: Progress) -> BaseDisk:
    """Install ``cfg``'s OS onto ``build_dir/disk.qcow2`` with its installer; the disk."""
    if cfg.layout not in (Layout.FLAT, Layout.LVM):
        raise ConfigError(f"--layout {cfg.layout.value} is not an installer build")
    build_id = uuid.uuid4().hex[:12]
    disk = build_dir / DISK_NAME
    log = build_dir / "install.log"
    accel = qemu.probe_accel(
        cfg.arch, progress, requested=cfg.machine.accel, cache_dir=cfg.source.cache_dir
    )
    distro = cfg.release.distro
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=build_dir)))
        seed: Path | None = None
        if distro == "debian":
            boot, src = _debian_boot(cfg, work, progress, stack, log)
        else:
            boot, seed, src = _ubuntu_boot(cfg, work, progress, build_id)
        _blank_disk(disk, cfg.machine.disk_size)
        spec = qemu.build_spec(
            cfg,
            accel=accel,
            disk=disk,
            serial_log=build_dir / "install-serial.log",
            qmp_socket=stack.enter_context(qemu.short_socket_path(work / "qmp.sock")),
            firmware=qemu.prepare_firmware(cfg.arch, cfg.machine.firmware, work),
            seed=seed,
        )
        spec = installer.installer_spec(spec, boot, distro=distro)
        with open(log, "a") as fh:
            fh.write(f"qemu: {shlex.join(qemu.qemu_argv(spec))}\n")
        console = (lambda line: progress.info(f"console: {line}")) if cfg.machine.console else None
        timeout = installer_timeout(accel, cfg.machine.timeout)
        progress.info(f"installing {cfg.series} ({cfg.layout.value}) from {src.origin}; {accel}")
        took = installer.run_installer(
            spec, stderr_log=build_dir / "install-qemu.log", timeout=timeout, console=console
        )
    progress.info(f"the installer finished in {took:.0f} s")
    return BaseDisk(
        path=disk,
        format="qcow2",
        sha256=src.sha256,
        origin=f"installer: {src.origin}",
        date=src.date,
        kind="installer",
        kernel=(cfg.provision.kernel or cfg.release.kernel_package(cfg.arch))
        if distro == "debian"
        else None,
    )
