"""``--locked``: a config, and the base disk it got, compared with a lock; drift is refused.

:func:`check_locked` compares a config with a lock before a build, from local files
and the cache only, and raises one ConfigError naming every input that differs;
:func:`check_mirror` asks the mirror, before a bootstrap, whether it would still
install the locked versions; :func:`check_base` checks the base disk a build got.
:func:`pin_config` narrows a config to the locked cloud image, so the sources refuse
any other content before downloading it. Nothing here resolves or writes a lock
(``lock`` does) or prints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from ..base import bootstrap, pkgversions
from ..base import recipe as bootrecipe
from ..config.tree import Config
from ..errors import ConfigError
from ..families import catalogue
from ..progress import Progress
from ..sources import cache, images
from ..sources.basedisk import BaseDisk
from ..version import __version__
from .lock import mirror_versions
from .lock_inputs import current_inputs
from .lockfile import BootstrapPin, CloudPin, Inputs, Lock

_SHOWN = 6


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
        found = pkgversions.base_versions(cached.path.parent, cfg.release.family)
        diffs = compare_versions(pin.packages, found)
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
    diffs = compare_versions(lock.bootstrap.packages, mirror_versions(rec, progress).packages)
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
