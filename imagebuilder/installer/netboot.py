"""A netboot installer's kernel and initrd, fetched as a package of the release's archive.

Some families ship their netboot installer as a package of the archive (Debian's
``debian-installer-<N>-netboot-<arch>``; the installer kind names it and where its
kernel and initrd are inside). :func:`netboot_files` has the family's host tools
download it in a private root (only the mirror and the release's archive keyring,
nothing of the host's own package state), so the archive's signature chain is
checked by those tools, and streams the kernel and initrd out of the package into
``<cache>/netboot/<package>_<version>/``, written under temporary names and
renamed, with ``meta.json`` last; a later build, or an ``--offline`` one, reuses
them. This module does not boot anything (:mod:`imagebuilder.installer.boot` does)
and never touches the host's own package configuration.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..config.tree import Config
from ..errors import ConfigError, OfflineError, SourceError, host_package_hint
from ..families.seam import NetbootPackage
from ..progress import Progress
from ..sources import cache

__all__ = ["Netboot", "cached_netboot", "netboot_files"]


@dataclass(frozen=True)
class Netboot:
    """A cached netboot installer: its kernel and initrd, and where they came from."""

    kernel: Path
    initrd: Path
    package: str
    version: str
    deb_sha256: str
    mirror: str
    date: int  # the kernel's mtime in the package: the output's default SOURCE_DATE_EPOCH

    @classmethod
    def load(cls, d: Path) -> Netboot | None:
        meta = cache.read_json(d / "meta.json")
        kernel, initrd = d / "linux", d / "initrd.gz"
        if meta is None or not (kernel.is_file() and initrd.is_file()):
            return None
        try:
            return cls(
                kernel, initrd, str(meta["package"]), str(meta["version"]),
                str(meta["deb_sha256"]), str(meta["mirror"]), int(meta["date"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError):
            return None


def _netboot(cfg: Config) -> NetbootPackage:
    kind = cfg.release.family.installer
    if kind is None or kind.netboot is None:
        raise ConfigError(
            f"{cfg.series} has no netboot installer in its archive",
            hint="pass the installer ISO with --iso PATH",
        )
    return kind.netboot


def _root(cfg: Config) -> Path:
    return cfg.source.cache_dir / "netboot"


def cached_netboot(cfg: Config) -> Netboot | None:
    """The newest complete netboot installer for ``cfg`` already in the cache, if any."""
    package = _netboot(cfg).package(cfg.series, cfg.arch)
    found = sorted(
        (d for d in _root(cfg).glob(f"{package}_*") if (d / "meta.json").is_file()),
        key=lambda d: d.stat().st_mtime,
    )
    for d in reversed(found):
        if (nb := Netboot.load(d)) is not None:
            return nb
    return None


def _sources(cfg: Config) -> list[str]:
    rel = cfg.release
    mirror = (cfg.source.mirror or rel.archive_mirror(cfg.arch)).rstrip("/")
    return [rel.family.packages.archive_source(mirror, cfg.series, rel.bootstrap_components()[:1])]


def _keyring(cfg: Config) -> Path:
    keyring = cfg.source.keyring or Path(cfg.release.archive_keyring())
    if not keyring.is_file():
        raise SourceError(
            f"archive keyring {keyring} is missing",
            hint=host_package_hint(cfg.release.family.keyring_package) + ", or pass --keyring FILE",
        )
    return keyring


def _extract(deb: Path, payload: IO[bytes], members: dict[str, Path]) -> int:
    """Stream ``members`` of the package's files to their paths; the newest mtime."""
    left = dict(members)
    newest = 0
    with tarfile.open(fileobj=payload, mode="r|") as tar:
        for info in tar:
            dest = left.pop(info.name, None)
            if dest is None or not info.isfile():
                continue
            src = tar.extractfile(info)
            assert src is not None
            tmp = dest.with_name(dest.name + ".partial")
            with open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            os.replace(tmp, dest)
            newest = max(newest, int(info.mtime))
            if not left:
                break
    if left:
        raise SourceError(
            f"{deb.name} does not hold {', '.join(sorted(left))}",
            hint="the netboot package's layout changed; pass the installer ISO with --iso",
        )
    return newest


@contextlib.contextmanager
def _staging(parent: Path) -> Iterator[Path]:
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_VERSION = re.compile(r"_([^_]+)_[^_]+\.[a-z]+$")


def netboot_files(cfg: Config, progress: Progress) -> Netboot:
    """Kernel and initrd of the netboot installer for ``cfg`` (cached, verified on fetch)."""
    netboot = _netboot(cfg)
    package = netboot.package(cfg.series, cfg.arch)
    family = cfg.release.family
    if cfg.source.offline:
        found = cached_netboot(cfg)
        if found is None:
            raise OfflineError(
                f"--offline: {package} is not in the cache {cfg.source.cache_dir}",
                hint="run once with network access, or pass the installer ISO with --iso",
            )
        return found
    root = _root(cfg)
    with _staging(root) as work:
        progress.info(f"fetching {package} from the {family.title} mirror (signed indexes)")
        pkg = family.packages.fetch_package(_sources(cfg), cfg.arch, _keyring(cfg), package, work)
        m = _VERSION.search(pkg.name)
        version = (m.group(1) if m else "unknown").replace(":", "%3a")
        dest = root / f"{package}_{version}"
        if (nb := Netboot.load(dest)) is not None:
            return nb
        kernel_member, initrd_member = netboot.members(cfg.series, cfg.arch)
        files = work / "files"
        files.mkdir()
        wanted = {kernel_member: files / "linux", initrd_member: files / "initrd.gz"}
        with family.packages.package_payload(pkg) as payload:
            date = _extract(pkg, payload, wanted)
        meta = {
            "package": package,
            "version": version,
            "deb_sha256": cache.hash_file(pkg)["sha256"],
            "mirror": _sources(cfg)[0],
            "date": date,
        }
        cache.write_json(files / "meta.json", meta)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(dest)
        os.replace(files, dest)
    progress.info(f"{package} {version}: kernel and initrd cached in {dest}")
    loaded = Netboot.load(dest)
    assert loaded is not None
    return loaded
