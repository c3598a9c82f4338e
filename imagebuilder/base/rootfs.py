"""Filling and finishing a bootstrap root: the family's tool, then the system settings.

:func:`fill` runs the release family's bootstrap tool into the mounted root (its
scratch directories in RAM, its log relayed as progress); :func:`configure` makes
the system a cloud image would be inside the chroot (initramfs, locale, networkd,
ssh host key unit, both firmwares' bootloader) and :func:`check` refuses a root
that would not boot. Needs the mounts :mod:`.layout` makes; never boots a VM.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.request
from pathlib import Path

from .. import run
from ..errors import (
    BootstrapError,
    CommandError,
    host_package_hint,
)
from ..families.seam import BootstrapJob, BootstrapTool
from ..progress import Progress
from . import bootloader, chroot, disklayout, hostcheck, mounts
from .recipe import Recipe

LOCALE = "en_US.UTF-8"


HOSTS = (
    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    "ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
)


#: sshd needs host keys; cloud-init makes them, this covers boots without cloud-init.
SSH_KEYGEN_UNIT = """\
[Unit]
Description=Generate missing SSH host keys (imagebuilder)
After=cloud-init.service
Before=ssh.service
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"""


def fill(
    rec: Recipe, target: Path, log: Path, progress: Progress, *, epoch: int | None
) -> int | None:
    """The family's tool fills ``target``; return the archive's date (or ``epoch``)."""
    write_files(target, rec, before_packages=True)
    progress.info(f"{rec.tool.name} {rec.suite} {rec.arch}: {len(rec.packages)} packages")
    with contextlib.ExitStack() as scratch:
        # The tool's downloads and package lists live in RAM, never on the disk.
        for sub in rec.tool.scratch:
            scratch.enter_context(mounts.mounted("tmpfs", target / sub, "-t", "tmpfs"))
        run_tool(rec, target, log, progress, epoch=epoch)
        date = epoch if epoch is not None else release_date(target, rec.tool)
    for sub in rec.tool.scratch:
        (target / sub / "partial").mkdir(mode=0o700, exist_ok=True)
    return date


def child_env(epoch: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower().endswith("_proxy")}
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(epoch)
    return env


def job(rec: Recipe, target: Path) -> BootstrapJob:
    """What the family's tool is asked to put into ``target``."""
    return BootstrapJob(
        rec.suite, rec.arch, rec.keyring, rec.packages, tuple(rec.sources()), target
    )


def run_tool(
    rec: Recipe, target: Path, log: Path, progress: Progress, *, epoch: int | None
) -> None:
    tool = rec.tool
    if not Path(rec.keyring).is_file():
        raise BootstrapError(
            f"archive keyring {rec.keyring} is missing",
            hint=host_package_hint(rec.family.keyring_package),
        )
    argv = tool.argv(job(rec, target))
    env = child_env(epoch)
    if hostcheck.emulated(rec.arch):
        env.update(tool.emulated_env)  # _configure_system makes the one initramfs needed
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        with run.spawn(argv, env=env, stdout=out, stderr=subprocess.STDOUT, grace=60) as proc:
            pos = 0
            while proc.poll() is None:
                time.sleep(0.5)
                pos = _relay(log, pos, progress, tool)
            _relay(log, pos, progress, tool)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise BootstrapError(
            f"{tool.name} {rec.suite} failed (exit {proc.returncode})",
            hint=f"check that {rec.mirror} serves {rec.suite} for {rec.arch} and has every "
            "package in --extra-packages; the log tail is below",
            details=tail,
        )


def _relay(log: Path, pos: int, progress: Progress, tool: BootstrapTool) -> int:
    """Pass the tool's log lines worth showing, written since ``pos``, on as progress."""
    with log.open("rb") as f:
        f.seek(pos)
        chunk = f.read()
    end = chunk.rfind(b"\n") + 1
    for line in chunk[:end].decode("utf-8", "replace").splitlines():
        shown = tool.relay(line)
        if shown is not None:
            progress.info(shown)
    return pos + end


def release_date(target: Path, tool: BootstrapTool) -> int | None:
    """Newest date of the release files the tool fetched, as epoch seconds."""
    dates = [tool.release_date(f.read_text(errors="replace"))
             for f in (target / tool.index_dir).glob("*Release")]  # fmt: skip
    return max((d for d in dates if d is not None), default=None)


def mirror_epoch(rec: Recipe, progress: Progress) -> int | None:
    """Newest date of the signed release files of the recipe's sources, read before the
    tool runs so that it (and mke2fs, mtools) get SOURCE_DATE_EPOCH; None, with a
    warning, when one cannot be read (the base is then not reproducible)."""
    dates: list[int] = []
    for where in rec.tool.release_urls(rec.sources()):
        try:
            with urllib.request.urlopen(where, timeout=30) as resp:
                date = rec.tool.release_date(resp.read(1 << 16).decode("utf-8", "replace"))
        except (OSError, ValueError) as exc:
            date, why = None, str(exc)
        else:
            why = "no Date: field"
        if date is None:
            progress.warning(
                f"cannot read the date of {where} ({why}): the bootstrap base will not be "
                "reproducible (set --source-date-epoch to make it so)"
            )
            return None
        dates.append(date)
    return max(dates, default=None)


def write_files(target: Path, rec: Recipe, *, before_packages: bool) -> None:
    """Plain files of the recipe: before the tool runs (read by package scripts) or after."""
    etc = target / "etc"
    bootloader.write_boot_config(target, rec.arch)  # again after: the tool writes an fstab
    if before_packages:
        return
    chroot.write_file(etc / "hostname", "localhost\n")
    chroot.write_file(etc / "hosts", HOSTS)
    chroot.write_file(etc / "machine-id", "", 0o444)
    (target / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    for key in (etc / "ssh").glob("ssh_host_*"):
        key.unlink()
    resolv = etc / "resolv.conf"
    resolv.unlink(missing_ok=True)
    if any((target / d / "systemd-resolved").exists() for d in ("lib/systemd", "usr/lib/systemd")):
        resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    lists = target / rec.tool.index_dir
    for f in lists.iterdir() if lists.is_dir() else ():
        if f.is_file() and f.name != "lock":
            f.unlink()


def configure(
    target: Path,
    rec: Recipe,
    dev: Path,
    layout: disklayout.DiskLayout,
    work: Path,
    log: Path,
    progress: Progress,
    *,
    epoch: int | None = None,
) -> None:
    """Everything after the tool: system settings, boot loaders, hygiene, checks."""
    firmwares = "BIOS + UEFI" if rec.arch == "amd64" else "UEFI"
    progress.info(f"configuring: locale, networkd, ssh, grub ({firmwares})")
    with chroot.chroot_mounts(target, dev, layout):
        _configure_system(target, rec, progress, epoch=epoch)
        bootloader.install_grub(
            target,
            dev,
            arch=rec.arch,
            bootloader_id=rec.family.bootloader_id,
            root_uuid=layout.root_uuid,
            stage=work / "esp",
            log=log,
            epoch=epoch,
        )
    write_files(target, rec, before_packages=False)
    check(target, rec, dev, layout.root_uuid)


def _configure_system(
    target: Path, rec: Recipe, progress: Progress, *, epoch: int | None = None
) -> None:
    """Steps that run inside the new system (mounts from chroot_mounts are in place).

    An emulated root was filled without an initramfs (the tool's ``emulated_env``):
    mkinitramfs starts thousands of processes, so under qemu-user one takes ~10
    minutes, and the package scripts would make two. The one needed is made here,
    before the bootloader's configuration, which lists what it finds.
    """
    tool = rec.tool
    try:
        for kernel in (
            sorted((target / "boot").glob("vmlinuz-*")) if hostcheck.emulated(rec.arch) else ()
        ):
            version = kernel.name.removeprefix("vmlinuz-")
            progress.info(f"initramfs for {version} (emulated: several minutes)")
            chroot.in_chroot(target, *tool.initramfs(version), env=child_env(epoch))
        files, command = tool.locale(LOCALE)
        for rel_path, text in files.items():
            chroot.write_file(target / rel_path, text)
        chroot.in_chroot(target, *command)
        chroot.write_file(
            target / "etc/systemd/system/imagebuilder-ssh-hostkeys.service", SSH_KEYGEN_UNIT
        )
        units = ["systemd-networkd.service", "imagebuilder-ssh-hostkeys.service"]
        if (target / "lib/systemd/system/systemd-resolved.service").exists():
            units.append("systemd-resolved.service")
        chroot.in_chroot(target, "systemctl", "enable", *units)
    except CommandError as exc:
        raise BootstrapError(
            f"configuring the bootstrap root failed: {exc.message}",
            hint="see details; a package in the set may be missing from the mirror",
            details=exc.details,
        ) from exc


def check(target: Path, rec: Recipe, dev: Path, root_uuid: str) -> None:
    """Fail now, with a precise message, rather than with a VM that never boots."""
    problems = bootloader.boot_problems(target, dev, arch=rec.arch, root_uuid=root_uuid)
    if not list((target / "boot").glob("initrd.img-*")):
        problems.append("no initramfs in /boot")
    locales = target / "usr/lib/locale/locale-archive"
    if not locales.is_file() or b"en_US.utf8" not in locales.read_bytes():
        problems.append(f"locale {LOCALE} not generated")
    if problems:
        raise BootstrapError(
            "the bootstrapped disk is incomplete: " + "; ".join(problems),
            hint="this is a bug in the bootstrap recipe; please report it with the log",
        )
