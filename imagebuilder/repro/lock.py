"""``imagebuilder.lock``: every input of a build, pinned; ``--locked`` refuses any drift.

:func:`resolve_lock` records what a config resolves to right now: the cloud image's
URL, serial and sha256 (fetched and verified through the cache, so the lock never
names an image nobody checked), or for ``--base bootstrap`` the mirror and the exact
version of every package (from the cached base disk when there is one, else from the
mirror's signed indexes with ``pkgversions``, no VM); digests of the seed templates,
the curtin hooks, the customize script and ``--http-dir``; the tool's version.
``lockfile`` writes it canonically, so :attr:`Lock.digest` (recorded in the
manifest) is stable. :func:`check_locked` compares a config with a lock before a
build and raises one ConfigError naming every input that differs;
:func:`check_base` does the same for the base disk a build actually got.

No network here except inside :func:`resolve_lock`; no printing; the cache layout
belongs to ``cache`` and ``bootstrap``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..base import bootstrap, pkgversions
from ..base import recipe as bootrecipe
from ..config.tree import BaseKind, Config, resolve
from ..errors import ConfigError, DownloadError, OfflineError
from ..families import catalogue
from ..families.seam import Resolution
from ..progress import Progress
from ..resources import data_dir
from ..sources import cache, download, images
from ..sources.basedisk import BaseDisk
from ..version import __version__
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

#: The curtin hooks shipped with imagebuilder (top-level ``curtin_hooks/``).
BUILTIN_HOOKS = data_dir("curtin_hooks")
#: Source options that decide which base a config resolves to (kept to rebuild a config).
OPTION_KEYS = ("mirror", "serial", "released", "base_image", "base_sha256", "extra_packages")
_SHOWN = 6


# ---- digests of local inputs ----------------------------------------------------------


def tree_digests(root: Path) -> dict[str, str]:
    """Every file under ``root``: relative path -> ``"<mode> <sha256>"`` or ``"link <target>"``."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if "__pycache__" in rel.parts or p.suffix == ".pyc":
            continue
        if p.is_symlink():
            out[rel.as_posix()] = f"link {os.readlink(p)}"
        elif p.is_file():
            mode = p.stat().st_mode & 0o7777
            out[rel.as_posix()] = f"{mode:o} {cache.hash_file(p)['sha256']}"
    return out


def current_inputs(cfg: Config) -> Inputs:
    from ..vm.seed import SEEDS_DIR

    hooks = cfg.output.curtin_hooks
    hooks_dir = hooks if hooks is not None else BUILTIN_HOOKS
    script = cfg.provision.customize
    http = cfg.provision.http_dir
    return Inputs(
        seeds=tree_digests(SEEDS_DIR),
        curtin_hooks=tree_digests(hooks_dir) if hooks_dir.is_dir() else {},
        curtin_hooks_source="built-in" if hooks is None else str(hooks),
        customize=cache.hash_file(script)["sha256"] if script is not None else None,
        customize_name=script.name if script is not None else None,
        http_dir=tree_digests(http) if http is not None else None,
    )


# ---- resolving a lock -----------------------------------------------------------------


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


def _from_mirror(rec: bootrecipe.Recipe, progress: Progress) -> Resolution:
    family = catalogue.get(rec.suite).family
    progress.info(
        f"resolving {len(rec.packages)} packages and their dependencies with {family.packages.name}"
    )
    return family.resolve_versions(
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
        res = _from_mirror(rec, progress)
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


# ---- checking -----------------------------------------------------------------------------


def _listing(items: list[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def compare_versions(locked: Mapping[str, str], actual: Mapping[str, str]) -> list[str]:
    """``name old -> new``, ``name (not installed)``, ``name new (not in the lock)``."""
    out = []
    for name in sorted(locked.keys() | actual.keys()):
        want, got = locked.get(name), actual.get(name)
        if got is None:
            out.append(f"{name} {want} (not installed)")
        elif want is None:
            out.append(f"{name} {got} (not in the lock)")
        elif want != got:
            out.append(f"{name} {want} -> {got}")
    return out


def _compare_tree(
    what: str, locked: Mapping[str, str] | None, now: Mapping[str, str] | None
) -> list[str]:
    if locked == now:
        return []
    if locked is None or now is None:
        return [
            f"{what}: {'set' if now is not None else 'not set'} now, "
            f"{'set' if locked is not None else 'not set'} in the lock"
        ]
    changed = [f"{n} changed" for n in sorted(locked.keys() & now.keys()) if locked[n] != now[n]]
    changed += [f"{n} added" for n in sorted(now.keys() - locked.keys())]
    changed += [f"{n} removed" for n in sorted(locked.keys() - now.keys())]
    return [f"{what}: {_listing(changed)}"]


def _check_inputs(lock: Inputs, now: Inputs) -> list[str]:
    out = _compare_tree("seed templates (seeds/)", lock.seeds, now.seeds)
    if (
        lock.curtin_hooks_source != now.curtin_hooks_source
        and lock.curtin_hooks != now.curtin_hooks
    ):
        out.append(
            f"curtin hooks: {now.curtin_hooks_source} now, {lock.curtin_hooks_source} in the lock"
        )
    else:
        out += _compare_tree("curtin hooks", lock.curtin_hooks, now.curtin_hooks)
    if lock.customize != now.customize:
        if lock.customize is None or now.customize is None:
            out.append(
                f"customize script: {'given' if now.customize else 'none'} now, "
                f"{'one' if lock.customize else 'none'} in the lock"
            )
        else:
            out.append(
                f"customize script {now.customize_name}: sha256 {now.customize[:12]}, "
                f"the lock has {lock.customize[:12]} ({lock.customize_name})"
            )
    out += _compare_tree("--http-dir", lock.http_dir, now.http_dir)
    return out


def _is_local(cfg: Config) -> bool:
    img = cfg.source.base_image
    return img is not None and urlsplit(img).scheme not in ("http", "https")


def _check_cloud(cfg: Config, pin: CloudPin) -> list[str]:
    root = cfg.source.cache_dir
    if _is_local(cfg):
        assert cfg.source.base_image is not None
        path = Path(cfg.source.base_image).expanduser()
        if not path.is_file():
            return [f"base image {path}: no such file"]
        digest = cache.file_sha256(root, path)
        return (
            []
            if digest == pin.sha256
            else [f"base image {path}: sha256 {digest[:16]}..., the lock pins {pin.sha256[:16]}..."]
        )
    url = images.target(cfg).url
    if url != pin.url:
        return [f"base image URL: {url} now, {pin.url} in the lock"]
    rec = cache.load_record(root, url)
    if rec is not None and rec.sha256 != pin.sha256:
        return [
            f"base image: the cache holds sha256 {rec.sha256[:16]}... for {pin.name}, the "
            f"lock pins {pin.sha256[:16]}... (published {pin.serial or pin.date})"
        ]
    return []


def _check_bootstrap(cfg: Config, pin: BootstrapPin) -> list[str]:
    rec = bootrecipe.recipe(cfg)
    out = []
    if rec.mirror != pin.mirror:
        out.append(f"bootstrap mirror: {rec.mirror} now, {pin.mirror} in the lock")
    if set(rec.packages) != set(pin.requested):
        added = [f"+{p}" for p in sorted(set(rec.packages) - set(pin.requested))]
        gone = [f"-{p}" for p in sorted(set(pin.requested) - set(rec.packages))]
        out.append(f"bootstrap package list: {_listing(added + gone)}")
    if not out and rec.key != pin.recipe_key:
        out.append("bootstrap recipe: this imagebuilder builds base disks differently")
    keyring = Path(rec.keyring)
    if (
        pin.keyring_sha256
        and keyring.is_file()
        and cache.hash_file(keyring)["sha256"] != pin.keyring_sha256
    ):
        out.append(f"archive keyring {keyring} differs from the one locked")
    cached = bootstrap.cached_base(cfg.source.cache_dir, rec)
    if cached is not None and not out:
        diffs = compare_versions(
            pin.packages, pkgversions.base_versions(cached.path.parent, cfg.release.family)
        )
        if diffs:
            out.append(f"cached base {rec.name} has other packages: {_listing(diffs)}")
    return out


def check_locked(cfg: Config, lock: Lock) -> None:
    """Raise ConfigError naming every input of ``cfg`` that differs from ``lock``.

    Uses only local files and the cache (no network). A bootstrap base that is not
    cached yet is checked after it is built, by :func:`check_base`.
    """
    problems = [
        f"{what}: {now} now, {then} in the lock"
        for what, now, then in (
            ("series", cfg.series, lock.series),
            ("arch", cfg.arch, lock.arch),
            ("base", cfg.source.base.value, lock.base),
        )
        if now != then
    ]
    if not problems:  # the same kind of base: compare what it resolves to
        if lock.cloud is not None:
            problems += _check_cloud(cfg, lock.cloud)
        if lock.bootstrap is not None:
            problems += _check_bootstrap(cfg, lock.bootstrap)
    problems += _check_inputs(lock.inputs, current_inputs(cfg))
    if lock.tool_version != __version__:
        problems.insert(0, f"imagebuilder {__version__} now, {lock.tool_version} in the lock")
    if problems:
        raise ConfigError(
            f"--locked: {len(problems)} input(s) differ from {lock.where}: " + "; ".join(problems),
            hint="restore those inputs, or if the change is intended run 'imagebuilder lock' "
            "again (same options) to write a new lock",
        )


def check_base(base: BaseDisk, lock: Lock) -> None:
    """Raise ConfigError unless ``base`` (what the build got) is what ``lock`` pins."""
    if lock.cloud is not None and base.sha256 != lock.cloud.sha256:
        raise ConfigError(
            f"--locked: the base image is sha256 {base.sha256[:16]}..., {lock.where} pins "
            f"{lock.cloud.sha256[:16]}... ({lock.cloud.url})",
            hint="the mirror published a new build: pin it with --serial, or import the "
            "bundle made with the lock ('imagebuilder bundle import')",
        )
    if lock.bootstrap is not None:
        diffs = compare_versions(
            lock.bootstrap.packages,
            pkgversions.base_versions(base.path.parent, catalogue.get(lock.series).family),
        )
        if diffs:
            raise ConfigError(
                f"--locked: the bootstrap base has {len(diffs)} package(s) other than "
                f"{lock.where} pins: {_listing(diffs)}",
                hint="the mirror moved on since the lock was made: import the bundle made "
                "with the lock, or write a new lock and remove the stale base "
                f"({base.path.parent})",
            )


def check_mirror(cfg: Config, lock: Lock, progress: Progress) -> None:
    """Before bootstrapping a base for a locked build (not cached, not offline): raise
    ConfigError if the mirror would now install other versions than ``lock`` pins
    (~6 s of apt instead of a ~2 min bootstrap that :func:`check_base` then refuses)."""
    if lock.bootstrap is None or cfg.source.offline:
        return
    rec = bootrecipe.recipe(cfg)
    if bootstrap.cached_base(cfg.source.cache_dir, rec) is not None:
        return
    diffs = compare_versions(lock.bootstrap.packages, _from_mirror(rec, progress).packages)
    if diffs:
        raise ConfigError(
            f"--locked: {rec.mirror} would now install {len(diffs)} package(s) other than "
            f"{lock.where} pins: {_listing(diffs)}",
            hint="the mirror moved on since the lock was made: import the bundle made with "
            "the lock ('imagebuilder bundle import'), or write a new lock",
        )


def pin_config(cfg: Config, lock: Lock) -> Config:
    """``cfg`` with the cloud image pinned to the locked URL and sha256 (sources then refuse
    any other content before downloading it). Bootstrap configs are returned unchanged."""
    if lock.cloud is None:
        return cfg
    image = cfg.source.base_image if _is_local(cfg) else lock.cloud.url
    src = dataclasses.replace(cfg.source, base_image=image, base_sha256=lock.cloud.sha256)
    return dataclasses.replace(cfg, source=src)


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
    "check_base",
    "check_locked",
    "check_mirror",
    "config_from_lock",
    "current_inputs",
    "from_toml",
    "pin_config",
    "read_lock",
    "resolve_lock",
    "to_toml",
    "write_lock",
]
