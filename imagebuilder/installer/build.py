"""Installer builds (``--layout flat|lvm``): install the OS onto a blank build disk.

:func:`install_disk` makes ``<build_dir>/disk.qcow2`` (blank, ``--disk-size``) and
runs the release family's installer on it with no keystrokes until it powers the VM
off. The family's installer kind renders the answer file, which is served by the
loopback HTTP server or written onto a cidata ISO as the kind asks; the kernel and
initrd come out of the installer's ISO (:mod:`imagebuilder.installer.isofetch`, a
local ``--iso`` or the published one), or, for a kind that boots from the package
mirror, the netboot installer (:mod:`imagebuilder.installer.netboot`, after the
mirror is checked for the components it will download,
:mod:`imagebuilder.installer.preflight`).

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
from ..families.seam import AnswerRequest, InstallerKind
from ..progress import Progress
from ..run import run
from ..sources.basedisk import BaseDisk
from ..vm import httpserve, qemu, qemu_cmdline, uefi
from . import boot as installer
from . import isofetch, netboot, preflight

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


def _answers(
    cfg: Config, kind: InstallerKind, work: Path, stack: contextlib.ExitStack, log: Path,
    build_id: str,
) -> tuple[str | None, Path | None]:  # fmt: skip
    """The answer file, served until ``stack`` closes (its URL) or on a seed ISO (its path)."""
    request = AnswerRequest(
        suite=cfg.series,
        mirror=cfg.source.mirror or cfg.release.archive_mirror(cfg.arch),
        layout=cfg.layout.value,
        firmware=cfg.machine.firmware.value,
        kernel=cfg.provision.kernel or cfg.release.kernel_package(cfg.arch),
        arch=cfg.arch,
        proxy=cfg.provision.http_proxy,
    )
    text = kind.answers(request)
    with open(log, "a") as fh:
        fh.write(f"{kind.answer_file} ({len(text)} bytes):\n{text}\n")
    if not kind.served:
        seed = installer.write_answers_seed(
            work / "answers.iso", kind, text,
            instance_id=f"imagebuilder-install-{build_id}", hostname="imagebuilder",
        )  # fmt: skip
        return None, seed
    www = work / "answers"
    www.mkdir()
    (www / kind.answer_file).write_text(text)
    port = stack.enter_context(httpserve.serve(www))
    return f"{httpserve.guest_url(port)}/{kind.answer_file}", None


def _boot_media(
    cfg: Config, kind: InstallerKind, work: Path, progress: Progress, cmdline: str
) -> tuple[installer.InstallerBoot, _Source]:
    """The installer's kernel and initrd: out of its ISO, or the netboot installer."""
    if cfg.source.iso is not None or kind.netboot is None:
        iso = isofetch.installer_iso(cfg, progress)
        files = installer.extract_boot_files(iso.path, work, cfg.arch, kind)
        boot = installer.InstallerBoot(files.kernel, files.initrd, cmdline, cdrom=iso.path)
        return boot, _Source(iso.origin, iso.sha256, iso.date)
    nb = netboot.netboot_files(cfg, progress)
    if not cfg.source.offline:
        mirror = cfg.source.mirror or cfg.release.archive_mirror(cfg.arch)
        checked = preflight.check_mirror(kind, mirror, cfg.series, cfg.arch, nb.initrd)
        progress.info(f"the mirror has all {checked} installer components the installer needs")
    boot = installer.InstallerBoot(nb.kernel, nb.initrd, cmdline)
    return boot, _Source(f"{nb.package} {nb.version} ({nb.mirror})", nb.deb_sha256, nb.date)


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
    family = cfg.release.family
    kind = family.installer
    if kind is None:
        raise ConfigError(
            f"{cfg.series} has no installer this tool can run",
            hint="build it from its cloud image (--layout cloudimg)",
        )
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=build_dir)))
        url, seed = _answers(cfg, kind, work, stack, log, build_id)
        boot, src = _boot_media(cfg, kind, work, progress, kind.cmdline(url, cfg.arch))
        _blank_disk(disk, cfg.machine.disk_size)
        spec = qemu_cmdline.build_spec(
            cfg,
            accel=accel,
            disk=disk,
            serial_log=build_dir / "install-serial.log",
            qmp_socket=stack.enter_context(qemu.short_socket_path(work / "qmp.sock")),
            firmware=uefi.prepare_firmware(cfg.arch, cfg.machine.firmware, work),
            seed=seed,
        )
        spec = installer.installer_spec(spec, boot, min_memory=kind.min_memory)
        with open(log, "a") as fh:
            fh.write(f"qemu: {shlex.join(qemu_cmdline.qemu_argv(spec))}\n")
        console = (lambda line: progress.info(f"console: {line}")) if cfg.machine.console else None
        timeout = installer_timeout(accel, cfg.machine.timeout)
        progress.info(f"installing {cfg.series} ({cfg.layout.value}) from {src.origin}; {accel}")
        took = installer.run_installer(
            spec, stderr_log=build_dir / "install-qemu.log", timeout=timeout, kind=kind,
            console=console,
        )  # fmt: skip
    progress.info(f"the installer finished in {took:.0f} s")
    return BaseDisk(
        path=disk,
        format="qcow2",
        sha256=src.sha256,
        origin=f"installer: {src.origin}",
        date=src.date,
        kind="installer",
        kernel=None
        if family.maas_installs_kernel
        else (cfg.provision.kernel or cfg.release.kernel_package(cfg.arch)),
    )
