"""``imagebuilder lock``: what every input of a config resolves to right now, pinned.

:func:`resolve_lock` records the cloud image's URL, serial and sha256 (fetched and
verified through the cache, so the lock never names an image nobody checked), or for
``--base bootstrap`` the mirror and the exact version of every package (from the
cached base disk when there is one, else from the mirror's signed indexes with
``pkgversions``, no VM); the digests of the local inputs (``lock_inputs``); the
tool's version. ``lockfile`` writes it canonically, so :attr:`Lock.digest` (recorded
in the manifest) is stable; its names are re-exported here, the lock's public face.
:func:`config_from_lock` goes the other way: a config that resolves to the locked
base. Comparing a config or a base with a lock is ``lock_check``'s, not this
module's.

No network here except inside :func:`resolve_lock` and :func:`mirror_versions`; no
printing; the cache layout belongs to ``cache`` and ``bootstrap``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..base import bootstrap, pkgversions
from ..base import recipe as bootrecipe
from ..config.tree import BaseKind, Config, resolve
from ..errors import DownloadError, OfflineError
from ..families.seam import Resolution
from ..progress import Progress
from ..sources import cache, download, images
from ..version import __version__
from .lock_inputs import current_inputs
from .lockfile import (
    DEFAULT_LOCK,
    BootstrapPin,
    CloudPin,
    Inputs,
    Lock,
    from_toml,
    read_lock,
    to_toml,
    write_lock,
)

#: Source options that decide which base a config resolves to (kept to rebuild a config).
OPTION_KEYS = ("mirror", "serial", "released", "base_image", "base_sha256", "extra_packages")


def _serial(cfg: Config, url: str) -> str | None:
    """The build serial of a daily ``current/`` image, from its ``unpacked/build-info.txt``."""
    if cfg.source.serial or cfg.source.offline or not cfg.release.family.daily_serials:
        return cfg.source.serial
    info = url.rsplit("/", 1)[0] + "/unpacked/build-info.txt"
    try:
        with download.session() as s:
            got = download.get_small(s, info, missing_ok=True)
    except DownloadError:
        return None
    m = re.search(rb"^serial=(\S+)", got[0], re.M) if got else None
    return m.group(1).decode() if m else None


def _cloud_pin(cfg: Config, progress: Progress) -> CloudPin:
    base = images.fetch_base_image(cfg, progress, refresh=cfg.source.refresh)
    rec = cache.load_record(cfg.source.cache_dir, base.origin)
    if rec is None:  # a local --base-image
        size = base.path.stat().st_size
        return CloudPin(base.origin, base.path.name, base.sha256, size, base.date, None, "local")
    serial = _serial(cfg, rec.url)
    return CloudPin(rec.url, rec.name, rec.sha256, rec.size, rec.date, serial, rec.verified)


def mirror_versions(rec: bootrecipe.Recipe, progress: Progress) -> Resolution:
    """What the family's package tools would install for ``rec`` from its mirror now
    (the signed indexes, no VM)."""
    family = rec.family
    progress.info(
        f"resolving {len(rec.packages)} packages and their dependencies with {family.packages.name}"
    )
    return family.packages.resolve_versions(
        rec.sources(), rec.suite, rec.arch, Path(rec.keyring), rec.packages
    )


def _bootstrap_pin(cfg: Config, progress: Progress) -> BootstrapPin:
    rec = bootrecipe.recipe(cfg)
    cached = None if cfg.source.refresh else bootstrap.cached_base(cfg.source.cache_dir, rec)
    dates: dict[str, int] = {}
    if cached is not None:
        progress.info(f"reading package versions from the cached base {rec.name}")
        versions = pkgversions.base_versions(cached.path.parent, cfg.release.family)
        origin = f"base disk {rec.name}"
    elif cfg.source.offline:
        raise OfflineError(
            f"--offline: no cached bootstrap base {rec.name} to read package versions from",
            hint="lock once online (versions come from the mirror's indexes), or import a bundle",
        )
    else:
        res = mirror_versions(rec, progress)
        versions, dates, origin = res.packages, res.release_dates, f"apt indexes of {rec.mirror}"
    keyring = Path(rec.keyring)
    return BootstrapPin(
        suite=rec.suite,
        mirror=rec.mirror,
        sources=tuple(rec.sources()),
        keyring=rec.keyring,
        keyring_sha256=cache.hash_file(keyring)["sha256"] if keyring.is_file() else "",
        requested=rec.packages,
        recipe_key=rec.key,
        resolved_from=origin,
        release_dates=dates,
        packages=versions,
    )


def resolve_lock(cfg: Config, progress: Progress) -> Lock:
    """The lock for ``cfg`` as its inputs resolve now (cloud images are fetched and verified)."""
    options = {
        k: list(v) if isinstance(v, tuple) else v
        for k in OPTION_KEYS
        if (v := getattr(cfg.source, k)) not in (None, False, ())
    }
    cloud = boot = None
    if cfg.source.base is BaseKind.CLOUD:
        cloud = _cloud_pin(cfg, progress)
    else:
        boot = _bootstrap_pin(cfg, progress)
    return Lock(
        __version__,
        cfg.series,
        cfg.arch,
        cfg.source.base.value,
        options,
        current_inputs(cfg),
        cloud,
        boot,
    )


def config_from_lock(lock: Lock, values: Mapping[str, Any] | None = None) -> Config:
    """A config resolving to the locked base: series, arch, base and options from the lock,
    then ``values`` (CLI names with underscores, e.g. cache_dir, customize) on top."""
    merged: dict[str, Any] = {"series": lock.series, "arch": lock.arch, "base": lock.base}
    merged.update(lock.options)
    merged.update({k: v for k, v in (values or {}).items() if v is not None})
    return resolve(merged, environ={})


__all__ = [
    "DEFAULT_LOCK",
    "BootstrapPin",
    "CloudPin",
    "Inputs",
    "Lock",
    "config_from_lock",
    "from_toml",
    "mirror_versions",
    "read_lock",
    "resolve_lock",
    "to_toml",
    "write_lock",
]
