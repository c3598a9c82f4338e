"""Bootstrap base disks: a cloud-image-like disk built from a package mirror, with no VM.

``bootstrap_base(cfg, progress)`` returns a cached qcow2 :class:`BaseDisk` filled by
the release family's bootstrap tool (mmdebstrap, for the families that use it) straight
into the root partition of a loop-mounted raw disk laid out
like an Ubuntu cloud image (``diskimage``), then configured the way cloud images
are: kernel, grub for SeaBIOS and UEFI, cloud-init, openssh, netplan with
systemd-networkd, en_US.UTF-8, fstab by label, serial console, empty machine-id,
no ssh host keys. The result is cached under ``<cache>/bootstrap/<name>/``
(disk.qcow2 + meta.json), keyed by suite, arch, package set, mirror and
:data:`RECIPE_VERSION`; it is built in a temporary sibling and renamed into place
only when complete.

Needs root (loop devices, mounts, chroot). It never boots a VM, never prints, and
does not know what the pipeline does with the disk afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import run
from ..config.tree import Config
from ..errors import (
    BootstrapError,
    CommandError,
    ImageBuilderError,
    OfflineError,
    ToolNotFoundError,
    host_package_hint,
)
from ..families import catalogue
from ..families.seam import BootstrapJob, BootstrapTool, Family
from ..progress import Progress
from ..sources import cache
from ..sources.basedisk import BaseDisk
from . import layout as diskimage

#: Bump when the recipe below changes what ends up on the disk: invalidates caches.
#: 2: SOURCE_DATE_EPOCH always set (mmdebstrap, mke2fs, mtools), FAT made --invariant.
RECIPE_VERSION = 2
DISK_SIZE = 3 * diskimage.GIB

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


@dataclass(frozen=True)
class Recipe:
    """Everything that decides what a bootstrap base contains (and so its cache key)."""

    distro: str
    suite: str
    arch: str
    mirror: str
    keyring: str
    components: tuple[str, ...]
    kernel: str
    packages: tuple[str, ...]  # sorted; includes the kernel and grub packages

    @property
    def key(self) -> str:
        data = {
            "recipe": RECIPE_VERSION,
            "suite": self.suite,
            "arch": self.arch,
            "mirror": self.mirror,
            "packages": list(self.packages),
            "disk_size": DISK_SIZE,
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    @property
    def name(self) -> str:
        return f"{self.suite}-{self.arch}-{self.key[:16]}"

    @property
    def family(self) -> Family:
        return catalogue.get(self.suite).family

    @property
    def tool(self) -> BootstrapTool:
        return _tool(self.family)

    @property
    def origin(self) -> str:
        return f"{self.tool.name} {self.suite} {self.mirror}"

    def sources(self) -> list[str]:
        """The package sources: the release, its updates and its security pocket."""
        return self.tool.sources(self.family, self.mirror, self.suite, self.components)


def _tool(family: Family) -> BootstrapTool:
    if family.bootstrap is None:
        raise BootstrapError(
            f"{family.title} bases cannot be bootstrapped here", hint="use --base cloud"
        )
    return family.bootstrap


#: Host programs a build runs besides the family's own tool, and the host package of
#: each (checked before starting).
HOST_TOOLS = {
    "sfdisk": "fdisk", "partx": "util-linux",
    "losetup": "mount", "mount": "mount", "umount": "mount", "chroot": "coreutils",
    "fstrim": "util-linux", "mkfs.ext4": "e2fsprogs", "mkfs.vfat": "dosfstools",
    "mcopy": "mtools", "mdir": "mtools", "qemu-img": "qemu-utils",
}  # fmt: skip


def missing_tools(family_tool: str | None = None) -> dict[str, str]:
    """Programs a build needs that are not installed, with their packages (the family's
    tool is its own package)."""
    found = {}
    wanted = {**({family_tool: family_tool} if family_tool else {}), **HOST_TOOLS}
    for tool, pkg in wanted.items():
        try:
            run.which(tool)
        except ToolNotFoundError:
            found[tool] = pkg
    return found


BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
#: ELF e_machine of each foreign arch, as binfmt_misc's "magic" shows it (hex, bytes 18-19).
ELF_MACHINE = {"amd64": "3e00", "arm64": "b700"}


def emulation_problem(arch: str, binfmt_dir: Path | None = None) -> str | None:
    """Why ``arch`` programs cannot run here (mmdebstrap and chroot need it), or None.

    A foreign arch needs an enabled binfmt_misc entry for its ELF binaries whose
    interpreter exists and is opened at registration (flag ``F``), so it also
    works inside the target's chroot, where the interpreter path does not exist.
    """
    if not emulated(arch):
        return None
    name = catalogue.QEMU_ARCH.get(arch, arch)
    binfmt_dir = binfmt_dir or BINFMT_DIR
    status = binfmt_dir / "status"
    try:
        if status.read_text().strip() != "enabled":
            return "binfmt_misc is disabled"
    except OSError:
        return f"binfmt_misc is not mounted on {binfmt_dir}"
    for entry in sorted(binfmt_dir.iterdir()):
        if entry.name in ("status", "register"):
            continue
        with contextlib.suppress(OSError):
            lines = entry.read_text().splitlines()
            fields = dict(ln.partition(" ")[::2] for ln in lines[1:])
            magic = fields.get("magic", "")
            if magic.startswith("7f454c4602") and magic[36:40] == ELF_MACHINE.get(arch):
                if lines[0] != "enabled":
                    return f"the binfmt_misc entry {entry.name} for {name} is disabled"
                if "F" not in fields.get("flags:", ""):
                    return f"the binfmt_misc entry {entry.name} lacks the F (fix-binary) flag"
                return None
    return f"no binfmt_misc entry runs {name} programs (qemu-user-static)"


def recipe(cfg: Config) -> Recipe:
    rel = cfg.release
    return Recipe(
        distro=rel.distro,
        suite=rel.codename,
        arch=cfg.arch,
        mirror=(cfg.source.mirror or rel.archive_mirror(cfg.arch)).rstrip("/"),
        keyring=rel.archive_keyring(),
        components=rel.bootstrap_components(),
        kernel=rel.kernel_package(cfg.arch),
        packages=_tool(rel.family).packages(rel, cfg.arch, cfg.source.extra_packages),
    )


# ---- the cache ----------------------------------------------------------------------


def _base_from(dest: Path, meta: dict[str, Any]) -> BaseDisk:
    return BaseDisk(
        path=dest / "disk.qcow2",
        format="qcow2",
        sha256=str(meta["key"]),
        origin=str(meta["origin"]),
        date=int(meta["date"]),
        kind="bootstrap",
        kernel=str(meta["kernel"]),
    )


def cached_base(cache_dir: Path, rec: Recipe) -> BaseDisk | None:
    """The finished base disk for ``rec`` if the cache has it."""
    dest = cache_dir / "bootstrap" / rec.name
    meta = cache.read_json(dest / "meta.json")
    if meta is None or meta.get("key") != rec.key or not (dest / "disk.qcow2").is_file():
        return None
    try:
        return _base_from(dest, meta)
    except (KeyError, TypeError, ValueError):
        return None


def bootstrap_base(cfg: Config, progress: Progress) -> BaseDisk:
    """The bootstrap base disk for ``cfg``: from the cache, or built now (~2 min)."""
    rec = recipe(cfg)
    root = cfg.source.cache_dir / "bootstrap"
    found = cached_base(cfg.source.cache_dir, rec)
    if found is not None:
        progress.info(f"bootstrap base {rec.name} (cached)")
        return found
    if cfg.source.offline:
        raise OfflineError(
            f"bootstrap base {rec.name} ({rec.suite} {rec.arch} from {rec.mirror}) is not cached",
            hint=f"run 'imagebuilder fetch {rec.suite} --base bootstrap' once without --offline "
            f"(needs {rec.mirror}) to build it into {root / rec.name}",
        )
    if os.geteuid() != 0:
        raise BootstrapError(
            "--base bootstrap needs root (loop devices, mounts, chroot)",
            hint="run as root or with sudo, or use --base cloud",
        )
    missing = missing_tools(rec.tool.name)
    if missing:
        raise BootstrapError(
            f"--base bootstrap needs {', '.join(missing)}, not installed",
            hint=host_package_hint(*sorted(set(missing.values()))),
        )
    problem = emulation_problem(rec.arch)
    if problem:
        raise BootstrapError(
            f"--arch {rec.arch} on this {platform.machine()} host needs qemu-user emulation: "
            f"{problem}",
            hint="run scripts/setup-host.sh (host packages qemu-user-static binfmt-support; "
            f"update-binfmts --enable qemu-{catalogue.QEMU_ARCH.get(rec.arch, rec.arch)})",
        )
    root.mkdir(parents=True, exist_ok=True)
    with cache.locked(root / rec.name):
        found = cached_base(cfg.source.cache_dir, rec)  # built while we waited?
        if found is not None:
            return found
        for stale in root.glob(f".tmp-{rec.name}-*"):  # a killed build's (we hold the lock)
            _remove_work_dir(stale, progress)
        return _build_into_cache(cfg, rec, root, progress)


def _build_into_cache(cfg: Config, rec: Recipe, root: Path, progress: Progress) -> BaseDisk:
    dest = root / rec.name
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{rec.name}-", dir=root))
    log = work / "bootstrap.log"
    try:
        meta = _build(rec, work, log, progress, epoch=cfg.output.source_date_epoch)
        cache.write_json(work / "meta.json", meta)
        (work / "meta.json").chmod(0o644)
        (work / "disk.raw").unlink()
        (work / "root").rmdir()  # the (unmounted) mount point
        shutil.rmtree(work / "esp")
        work.chmod(0o755)
        if dest.exists():  # an unusable leftover (cached_base said no): replace it
            shutil.rmtree(dest)
        os.replace(work, dest)
    except BaseException as exc:
        kept = _keep_failure_log(log, cfg.source.cache_dir / "logs" / f"bootstrap-{rec.name}.log")
        if kept is not None and isinstance(exc, ImageBuilderError):
            exc.details = f"{exc.details}\nfull log: {kept}".strip()
        _remove_work_dir(work, progress)
        raise
    return _base_from(dest, meta)


def _keep_failure_log(log: Path, dest: Path) -> Path | None:
    with contextlib.suppress(OSError):
        if log.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, dest)
            return dest
    return None


def _remove_work_dir(work: Path, progress: Progress) -> None:
    """Delete a temporary build tree, but never through a mount left behind."""
    if diskimage.mounts_under(work):
        progress.warning(
            f"{work} still has mounts under it, so it was not deleted: check "
            f"'findmnt -R {work}', unmount, then remove it"
        )
        return
    shutil.rmtree(work, ignore_errors=True)


# ---- the build ----------------------------------------------------------------------


def _build(
    rec: Recipe, work: Path, log: Path, progress: Progress, *, epoch: int | None
) -> dict[str, Any]:
    """Build ``work/disk.qcow2`` for ``rec``; return its meta.json content."""
    start = time.monotonic()
    if epoch is None:  # the archive's date: what every timestamp written below is clamped to
        epoch = mirror_epoch(rec, progress)
    layout = diskimage.cloudimg_layout(rec.key, DISK_SIZE, arch=rec.arch)
    raw = work / "disk.raw"
    diskimage.create_raw(raw, layout)
    timings: dict[str, float] = {}
    with diskimage.attached(raw, layout) as dev:
        diskimage.format_partitions(dev, layout, epoch=epoch)
        root_part = diskimage.partition_device(dev, 1)
        with diskimage.mounted(root_part, work / "root", recursive_umount=True) as target:
            t0 = time.monotonic()
            date = _fill(rec, target, log, progress, epoch=epoch)
            timings[rec.tool.name] = round(time.monotonic() - t0, 1)
            t0 = time.monotonic()
            _configure(target, rec, dev, layout, work, log, progress, epoch=epoch)
            timings["configure"] = round(time.monotonic() - t0, 1)
        # Trim on a fresh mount, when every block freed during the build (replaced
        # initramfs images, package caches) is free on disk: they become holes in the raw
        # file and the qcow2 carries no deleted data.
        with diskimage.mounted(root_part, work / "root") as target:
            run.run(["fstrim", target], check=False)
    progress.info("converting to qcow2")
    run.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, work / "disk.qcow2"])
    return {
        "name": f"{rec.suite} {rec.arch} bootstrap",
        "key": rec.key,
        "sha256": rec.key,
        "recipe": RECIPE_VERSION,
        "origin": rec.origin,
        "distro": rec.distro,
        "suite": rec.suite,
        "arch": rec.arch,
        "mirror": rec.mirror,
        "sources": rec.sources(),
        "kernel": rec.kernel,
        "packages": list(rec.packages),
        "date": int(date if date is not None else time.time()),
        "built": int(time.time()),
        "seconds": {**timings, "total": round(time.monotonic() - start, 1)},
        "disk_guid": layout.disk_guid,
        "root_uuid": layout.root_uuid,
        "virtual_size": layout.size,
        "format": "qcow2",
    }


def _fill(
    rec: Recipe, target: Path, log: Path, progress: Progress, *, epoch: int | None
) -> int | None:
    """The family's tool fills ``target``; return the archive's date (or ``epoch``)."""
    _write_files(target, rec, before_packages=True)
    progress.info(f"{rec.tool.name} {rec.suite} {rec.arch}: {len(rec.packages)} packages")
    with contextlib.ExitStack() as scratch:
        # The tool's downloads and package lists live in RAM, never on the disk.
        for sub in rec.tool.scratch:
            scratch.enter_context(diskimage.mounted("tmpfs", target / sub, "-t", "tmpfs"))
        _run_tool(rec, target, log, progress, epoch=epoch)
        date = epoch if epoch is not None else _release_date(target, rec.tool)
    for sub in rec.tool.scratch:
        (target / sub / "partial").mkdir(mode=0o700, exist_ok=True)
    return date


def _child_env(epoch: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower().endswith("_proxy")}
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(epoch)
    return env


def job(rec: Recipe, target: Path) -> BootstrapJob:
    """What the family's tool is asked to put into ``target``."""
    return BootstrapJob(
        rec.suite, rec.arch, rec.keyring, rec.packages, tuple(rec.sources()), target
    )


def _run_tool(
    rec: Recipe, target: Path, log: Path, progress: Progress, *, epoch: int | None
) -> None:
    tool = rec.tool
    if not Path(rec.keyring).is_file():
        raise BootstrapError(
            f"archive keyring {rec.keyring} is missing",
            hint=host_package_hint(rec.family.keyring_package),
        )
    argv = tool.argv(job(rec, target))
    env = _child_env(epoch)
    if emulated(rec.arch):
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


def _release_date(target: Path, tool: BootstrapTool) -> int | None:
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


def _write_files(target: Path, rec: Recipe, *, before_packages: bool) -> None:
    """Plain files of the recipe: before the tool runs (read by package scripts) or after."""
    etc = target / "etc"
    diskimage.write_boot_config(target, rec.arch)  # again after: the tool writes an fstab
    if before_packages:
        return
    diskimage.write_file(etc / "hostname", "localhost\n")
    diskimage.write_file(etc / "hosts", HOSTS)
    diskimage.write_file(etc / "machine-id", "", 0o444)
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


def _configure(
    target: Path,
    rec: Recipe,
    dev: Path,
    layout: diskimage.DiskLayout,
    work: Path,
    log: Path,
    progress: Progress,
    *,
    epoch: int | None = None,
) -> None:
    """Everything after the tool: system settings, boot loaders, hygiene, checks."""
    firmwares = "BIOS + UEFI" if rec.arch == "amd64" else "UEFI"
    progress.info(f"configuring: locale, networkd, ssh, grub ({firmwares})")
    with diskimage.chroot_mounts(target, dev, layout):
        _configure_system(target, rec, progress, epoch=epoch)
        diskimage.install_grub(
            target,
            dev,
            arch=rec.arch,
            bootloader_id=rec.family.bootloader_id,
            root_uuid=layout.root_uuid,
            stage=work / "esp",
            log=log,
            epoch=epoch,
        )
    _write_files(target, rec, before_packages=False)
    _check(target, rec, dev, layout.root_uuid)


def emulated(arch: str) -> bool:
    """Whether ``arch`` programs run through qemu-user here, where starting one costs much."""
    return catalogue.QEMU_ARCH.get(arch) != platform.machine()


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
        for kernel in sorted((target / "boot").glob("vmlinuz-*")) if emulated(rec.arch) else ():
            version = kernel.name.removeprefix("vmlinuz-")
            progress.info(f"initramfs for {version} (emulated: several minutes)")
            diskimage.in_chroot(target, *tool.initramfs(version), env=_child_env(epoch))
        files, command = tool.locale(LOCALE)
        for rel_path, text in files.items():
            diskimage.write_file(target / rel_path, text)
        diskimage.in_chroot(target, *command)
        diskimage.write_file(
            target / "etc/systemd/system/imagebuilder-ssh-hostkeys.service", SSH_KEYGEN_UNIT
        )
        units = ["systemd-networkd.service", "imagebuilder-ssh-hostkeys.service"]
        if (target / "lib/systemd/system/systemd-resolved.service").exists():
            units.append("systemd-resolved.service")
        diskimage.in_chroot(target, "systemctl", "enable", *units)
    except CommandError as exc:
        raise BootstrapError(
            f"configuring the bootstrap root failed: {exc.message}",
            hint="see details; a package in the set may be missing from the mirror",
            details=exc.details,
        ) from exc


def _check(target: Path, rec: Recipe, dev: Path, root_uuid: str) -> None:
    """Fail now, with a precise message, rather than with a VM that never boots."""
    problems = diskimage.boot_problems(target, dev, arch=rec.arch, root_uuid=root_uuid)
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
