"""Bootstrap base disks: a cloud-image-like disk built from a package mirror, with no VM.

``bootstrap_base(cfg, progress)`` returns a cached qcow2 :class:`BaseDisk`: the
release family's bootstrap tool (mmdebstrap, for the families that use it) fills
the root partition of a loop-mounted raw disk laid out like an Ubuntu cloud image
(:mod:`.layout`), which is then configured the way cloud images are (:mod:`.rootfs`):
kernel, grub for SeaBIOS and UEFI, cloud-init, openssh, netplan with
systemd-networkd, en_US.UTF-8, fstab by label, serial console, empty machine-id,
no ssh host keys. The result is cached under ``<cache>/bootstrap/<name>/``
(disk.qcow2 + meta.json), keyed by the :mod:`.recipe`; it is built in a temporary
sibling and renamed into place only when complete.

Needs root (loop devices, mounts, chroot). It never boots a VM, never prints, and
does not know what the pipeline does with the disk afterwards.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import run
from ..config.tree import Config
from ..errors import (
    BootstrapError,
    ImageBuilderError,
    OfflineError,
    host_package_hint,
)
from ..families import catalogue
from ..progress import Progress
from ..sources import cache
from ..sources.basedisk import BaseDisk
from . import disklayout, hostcheck, mounts, rootfs
from .recipe import DISK_SIZE, RECIPE_VERSION, Recipe, recipe


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
    foreign = rec.tool.foreign_arch_tools if hostcheck.emulated(rec.arch) else {}
    missing = hostcheck.missing_tools({rec.tool.name: rec.tool.name, **foreign})
    if missing:
        raise BootstrapError(
            f"--base bootstrap needs {', '.join(missing)}, not installed",
            hint=host_package_hint(*sorted(set(missing.values()))),
        )
    problem = hostcheck.emulation_problem(rec.arch)
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
    if mounts.mounts_under(work):
        progress.warning(
            f"{work} still has mounts under it, so it was not deleted: check "
            f"'findmnt -R {work}', unmount, then remove it"
        )
        return
    shutil.rmtree(work, ignore_errors=True)


def _build(
    rec: Recipe, work: Path, log: Path, progress: Progress, *, epoch: int | None
) -> dict[str, Any]:
    """Build ``work/disk.qcow2`` for ``rec``; return its meta.json content."""
    start = time.monotonic()
    if epoch is None:  # the archive's date: what every timestamp written below is clamped to
        epoch = rootfs.mirror_epoch(rec, progress)
    layout = disklayout.cloudimg_layout(rec.key, DISK_SIZE, arch=rec.arch)
    raw = work / "disk.raw"
    disklayout.create_raw(raw, layout)
    timings: dict[str, float] = {}
    with mounts.attached(raw, layout) as dev:
        disklayout.format_partitions(dev, layout, epoch=epoch)
        root_part = disklayout.partition_device(dev, 1)
        with mounts.mounted(root_part, work / "root", recursive_umount=True) as target:
            t0 = time.monotonic()
            date = rootfs.fill(rec, target, log, progress, epoch=epoch)
            timings[rec.tool.name] = round(time.monotonic() - t0, 1)
            t0 = time.monotonic()
            rootfs.configure(target, rec, dev, layout, work, log, progress, epoch=epoch)
            timings["configure"] = round(time.monotonic() - t0, 1)
        # Trim on a fresh mount, when every block freed during the build (replaced
        # initramfs images, package caches) is free on disk: they become holes in the raw
        # file and the qcow2 carries no deleted data.
        with mounts.mounted(root_part, work / "root") as target:
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
