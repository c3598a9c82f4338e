"""Installer ISOs for installer builds: the family's published ISO, or a local ``--iso``.

An installer ISO's file name changes with every point release, so the family's
installer kind finds it in its directory's ``SHA256SUMS`` (``iso_pick``; Ubuntu's
live-server ISO, say), then it is fetched through
:func:`imagebuilder.sources.images.fetch_target` exactly like a cloud image:
signature of ``SHA256SUMS.gpg`` checked with ``--keyring`` (the cloud-image keyring
does not sign ISOs, so without ``--keyring`` the check is skipped with the usual
loud warning, or refused with ``--require-signature``), sha256 checked,
resumable, content-addressed in the cache. ``--offline`` finds it by its directory
in the cache's URL records. A local ``--iso PATH`` is used in place after its sha256
is recorded. This module fetches; it does not read the ISO (:mod:`imagebuilder.installer.iso`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config.tree import Config
from ..errors import ConfigError, OfflineError, SourceError
from ..progress import Progress
from ..sources import cache, download, images

__all__ = ["InstallerISO", "installer_iso"]

SUMS = "SHA256SUMS"


@dataclass(frozen=True)
class InstallerISO:
    path: Path
    sha256: str
    origin: str  # URL or local path
    date: int  # epoch seconds: the default SOURCE_DATE_EPOCH of the output


def _local(cfg: Config, path: Path) -> InstallerISO:
    if not path.is_file():
        raise SourceError(f"--iso {path}: no such file", hint="give an existing ISO image")
    digest = cache.file_sha256(cfg.source.cache_dir, path)
    real = path.resolve()
    return InstallerISO(real, digest, str(real), int(real.stat().st_mtime))


def _offline(cfg: Config, folder: str) -> InstallerISO:
    root = cfg.source.cache_dir
    for rec in sorted(cache.all_records(root), key=lambda r: r.date, reverse=True):
        if rec.url.startswith(folder + "/") and rec.name.endswith(f"-{cfg.arch}.iso"):
            blob = cache.blob_path(root, rec.sha256)
            if blob.is_file():
                return InstallerISO(blob, rec.sha256, rec.url, rec.date)
    raise OfflineError(
        f"--offline: no {cfg.series} installer ISO for {cfg.arch} is in the cache {root}",
        hint="run the build once with network access, or pass a local ISO with --iso PATH",
    )


def installer_iso(cfg: Config, progress: Progress) -> InstallerISO:
    """The verified installer ISO for ``cfg`` (downloaded, cached, or ``--iso``)."""
    if cfg.source.iso is not None:
        return _local(cfg, cfg.source.iso)
    kind = cfg.release.family.installer
    if kind is None or kind.iso_dir_url is None or kind.iso_pick is None:
        raise ConfigError(
            f"{cfg.series} publishes no installer ISO this tool can download",
            hint="pass a local installer ISO with --iso PATH",
        )
    folder = kind.iso_dir_url(cfg.release, cfg.arch, cfg.source.mirror)
    if cfg.source.offline:
        return _offline(cfg, folder)
    with download.session() as session:
        got = download.get_small(session, f"{folder}/{SUMS}", missing_ok=False)
    assert got is not None
    entry = kind.iso_pick(got[0].decode("utf-8", "replace"), cfg.arch)
    t = images.Target(
        url=f"{folder}/{entry.name}",
        name=entry.name,
        sums_url=f"{folder}/{SUMS}",
        sig_url=f"{folder}/{SUMS}.gpg",
        algo="sha256",
        pinned=None,
        serial=None,
        release_keyring=False,
    )
    disk = images.fetch_target(cfg, t, progress, refresh=cfg.source.refresh)
    if disk.sha256 != entry.sha256:
        raise SourceError(
            f"{entry.name}: sha256 {disk.sha256} in the cache, {entry.sha256} in {SUMS}",
            hint="run again with --refresh",
        )
    return InstallerISO(disk.path, disk.sha256, t.url, disk.date)
