"""The Debian installer's netboot kernel and initrd, fetched from the Debian mirror.

Debian ships its netboot installer as a package, ``debian-installer-<N>-netboot-<arch>``
(N: the release number). :func:`netboot_files` downloads it with the host's
``apt-get`` in a private apt root (:func:`imagebuilder.base.pkgversions.apt_root`: only
the mirror, the release's archive keyring, nothing of the host's apt state), so the
signed ``InRelease`` -> ``Packages`` -> ``.deb`` chain is checked by apt itself. The
kernel and initrd are streamed out of the package (``dpkg-deb --fsys-tarfile``) into
``<cache>/netboot/<package>_<version>/``, written under temporary names and renamed,
with ``meta.json`` last; a later build, or an ``--offline`` one, reuses them.
This module does not boot anything (:mod:`imagebuilder.installer` does) and never
touches the host's apt configuration.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..config.tree import Config
from ..errors import CommandError, ConfigError, DownloadError, OfflineError, SourceError
from ..families.aptresolve import apt_root
from ..progress import Progress
from ..run import run, spawn
from ..sources import cache

__all__ = ["Netboot", "cached_netboot", "member_paths", "netboot_files", "netboot_package"]


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


#: Debian release number of each codename with a netboot installer package.
RELEASE_NUMBERS = {"bullseye": "11", "bookworm": "12", "trixie": "13"}
#: Kernel file name inside the netboot tree, per architecture.
KERNEL_NAME = {"amd64": "linux", "arm64": "linux"}


def netboot_package(series: str, arch: str) -> str:
    """``debian-installer-12-netboot-amd64`` for bookworm amd64."""
    number = RELEASE_NUMBERS.get(series)
    if number is None:
        raise ConfigError(
            f"no Debian netboot installer is known for {series}",
            hint=f"use one of {', '.join(RELEASE_NUMBERS)}, or pass a netinst ISO with --iso",
        )
    return f"debian-installer-{number}-netboot-{arch}"


def member_paths(series: str, arch: str) -> tuple[str, str]:
    """Kernel and initrd inside the package's data tarball (text-mode installer)."""
    number = RELEASE_NUMBERS[series]
    tree = f"./usr/lib/debian-installer/images/{number}/{arch}/text/debian-installer/{arch}"
    return f"{tree}/{KERNEL_NAME[arch]}", f"{tree}/initrd.gz"


def _root(cfg: Config) -> Path:
    return cfg.source.cache_dir / "netboot"


def cached_netboot(cfg: Config) -> Netboot | None:
    """The newest complete netboot installer for ``cfg`` already in the cache, if any."""
    package = netboot_package(cfg.series, cfg.arch)
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
    return [f"deb {mirror} {cfg.series} main"]


def _keyring(cfg: Config) -> Path:
    keyring = cfg.source.keyring or Path(cfg.release.archive_keyring())
    if not keyring.is_file():
        raise SourceError(
            f"archive keyring {keyring} is missing",
            hint="apt-get install debian-archive-keyring, or pass --keyring FILE",
        )
    return keyring


def _apt(env: dict[str, str], cwd: Path, *args: str) -> str:
    try:
        proc = run(["apt-get", "-q", *args], env=env, cwd=cwd, timeout=1800)
    except CommandError as exc:
        raise DownloadError(
            f"apt-get {args[0]} of the Debian installer failed: {exc.message}",
            hint="check --mirror and HTTP(S)_PROXY; the mirror must be signed by the "
            "release's archive keyring",
            details=exc.details,
        ) from exc
    return proc.stdout.decode("utf-8", "replace")


def _extract(deb: Path, members: dict[str, Path]) -> int:
    """Stream ``members`` of the .deb's data tarball to their paths; the newest mtime."""
    left = dict(members)
    newest = 0
    argv: list[str | Path] = ["dpkg-deb", "--fsys-tarfile", deb]
    with spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
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
            hint="the netboot package's layout changed; pass a netinst ISO with --iso",
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


_VERSION = re.compile(r"_([^_]+)_[^_]+\.deb$")


def netboot_files(cfg: Config, progress: Progress) -> Netboot:
    """Kernel and initrd of Debian's netboot installer for ``cfg`` (cached, verified by apt)."""
    package = netboot_package(cfg.series, cfg.arch)
    if cfg.source.offline:
        found = cached_netboot(cfg)
        if found is None:
            raise OfflineError(
                f"--offline: {package} is not in the cache {cfg.source.cache_dir}",
                hint="run once with network access, or pass a Debian netinst ISO with --iso",
            )
        return found
    root = _root(cfg)
    with _staging(root) as work:
        with apt_root(_sources(cfg), cfg.arch, _keyring(cfg)) as env:
            progress.info(f"fetching {package} from the Debian mirror (signed indexes)")
            _apt(env, work, "update", "--error-on=any")
            _apt(env, work, "download", package)
        debs = sorted(work.glob(f"{package}_*.deb"))
        if not debs:
            raise SourceError(f"apt-get download left no {package} .deb", hint="run again")
        m = _VERSION.search(debs[0].name)
        version = (m.group(1) if m else "unknown").replace(":", "%3a")
        dest = root / f"{package}_{version}"
        if (nb := Netboot.load(dest)) is not None:
            return nb
        kernel_member, initrd_member = member_paths(cfg.series, cfg.arch)
        files = work / "files"
        files.mkdir()
        wanted = {kernel_member: files / "linux", initrd_member: files / "initrd.gz"}
        date = _extract(debs[0], wanted)
        meta = {
            "package": package,
            "version": version,
            "deb_sha256": cache.hash_file(debs[0])["sha256"],
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
