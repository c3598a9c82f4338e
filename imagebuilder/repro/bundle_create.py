"""Offline bundles: everything a locked build needs, in one ``.tar.zst``.

:func:`create_bundle` packs, for a lock and the config it was made from: the lock;
the cloud image blob with its cache record and, when the mirror still publishes
them, its checksum file and signature; or the finished bootstrap base disk
(``disk.qcow2`` + ``meta.json``, exactly as ``bootstrap`` caches it, so the
air-gapped host needs neither a mirror nor root nor mmdebstrap, and gets the very
packages the lock names); the keyrings; the customize script, custom curtin hooks
and ``--http-dir``. ``bundle.json`` comes first and lists every member's sha256.
The archive is a PAX tar streamed through multi-threaded zstandard.

``unbundle`` loads a bundle into the cache of another host.

This module never prints; the cache layout belongs to ``cache`` and ``bootstrap``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import zstandard

from ..base import bootstrap
from ..base import recipe as bootrecipe
from ..config.tree import Config
from ..errors import ChecksumError, DownloadError, OfflineError, SourceError
from ..progress import Progress
from ..sources import cache, download, images
from ..version import __version__
from . import lock_check
from .lockfile import CloudPin, Lock, to_toml

FORMAT = 1
MANIFEST = "bundle.json"
LOCK_NAME = "imagebuilder.lock"
DEFAULT_LEVEL = 3
CHUNK = 1 << 20


@dataclass(frozen=True)
class Member:
    name: str  # path inside the archive
    sha256: str
    size: int
    mode: int


@dataclass(frozen=True)
class BundleInfo:
    path: Path
    sha256: str
    size: int
    members: tuple[Member, ...]


class Counter:
    """Bytes through the bundle so far, reported as one progress counter."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0

    def add(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress.counter("bundle", self.done, self.total or None)


class Hashing:
    """A stream wrapper hashing what is read or written through it."""

    def __init__(self, inner: Any, counter: Counter | None = None) -> None:
        self.inner, self.hash, self.counter = inner, hashlib.sha256(), counter

    def _seen(self, data: bytes) -> None:
        self.hash.update(data)
        if self.counter is not None:
            self.counter.add(len(data))

    def read(self, n: int = -1) -> bytes:
        data: bytes = self.inner.read(n)
        self._seen(data)
        return data

    def write(self, data: bytes) -> int:
        self._seen(bytes(data))
        return int(self.inner.write(data))

    def flush(self) -> None:
        self.inner.flush()


# ---- create ---------------------------------------------------------------------------------


def _tree(root: Path, prefix: str) -> list[tuple[str, Path]]:
    return [
        (f"{prefix}/{p.relative_to(root).as_posix()}", p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink() and "__pycache__" not in p.parts
    ]


def _sums_files(
    cfg: Config, pin: CloudPin, verified_sums: str, progress: Progress
) -> list[tuple[str, bytes]]:
    """The published checksum file (+ signature) if it still lists the locked build."""
    rel = cfg.release
    folder = pin.url.rsplit("/", 1)[0]
    if cfg.source.offline or not verified_sums:
        return []
    out: list[tuple[str, bytes]] = []
    try:
        with download.session() as s:
            got = download.get_small(s, f"{folder}/{rel.checksum_file}", missing_ok=True)
            digest = verified_sums.split(":", 1)[1]
            if got is None or digest not in got[0].decode(errors="replace"):
                progress.warning(
                    f"{folder}/{rel.checksum_file} no longer lists the locked "
                    f"{pin.name}; the bundle carries its sha256 only"
                )
                return []
            out.append((f"checksums/{rel.checksum_file}", got[0]))
            if rel.signature_file:
                sig = download.get_small(s, f"{folder}/{rel.signature_file}", missing_ok=True)
                if sig is not None:
                    out.append((f"checksums/{rel.signature_file}", sig[0]))
    except DownloadError as exc:
        progress.warning(f"checksum file not bundled: {exc.message}")
    return out


def _collect(
    cfg: Config, lk: Lock, progress: Progress
) -> tuple[list[tuple[str, Path | bytes]], dict[str, Any]]:
    """(archive name, file or bytes) of every member, and the extra facts for bundle.json."""
    root = cfg.source.cache_dir
    items: list[tuple[str, Path | bytes]] = [(LOCK_NAME, to_toml(lk).encode())]
    facts: dict[str, Any] = {}
    keyrings: list[Path] = []
    if lk.cloud is not None:
        pin = lk.cloud
        rec = cache.load_record(root, pin.url)
        blob = cache.blob_path(root, pin.sha256)
        if rec is None and Path(pin.url).is_file():  # a local --base-image
            blob = Path(pin.url)
        elif rec is None or rec.sha256 != pin.sha256 or not blob.is_file():
            raise OfflineError(
                f"the cache {root} lacks the locked {pin.name} (sha256 {pin.sha256[:16]}...)",
                hint="run 'imagebuilder fetch' with the lock's options (or the build) first",
            )
        if cache.file_sha256(root, blob) != pin.sha256:
            raise ChecksumError(
                f"cached {pin.name} is corrupt",
                hint="run 'imagebuilder cache prune' and fetch it again",
            )
        items.append((f"cloud/{pin.name}", blob))
        facts["cloud"] = {"record": dataclasses.asdict(rec) if rec else None, "image": pin.name}
        items += _sums_files(cfg, pin, rec.sums if rec else "", progress)
        kr = cfg.source.keyring or images.default_keyring(cfg.release)
        keyrings += [kr] if kr is not None else []
    if lk.bootstrap is not None:
        rec_b = bootrecipe.recipe(cfg)
        base = bootstrap.cached_base(root, rec_b)
        if base is None:
            raise OfflineError(
                f"the cache {root} has no bootstrap base {rec_b.name} to bundle",
                hint="build once with --locked (it bootstraps the base), then bundle",
            )
        lock_check.check_base(base, lk)
        d = base.path.parent
        items += [(f"bootstrap/{rec_b.name}/{n}", d / n) for n in ("meta.json", "disk.qcow2")]
        facts["bootstrap"] = {"name": rec_b.name}
        keyrings += [Path(lk.bootstrap.keyring)] if Path(lk.bootstrap.keyring).is_file() else []
    items += [(f"keyrings/{k.name}", k) for k in keyrings]
    prov, out = cfg.provision, cfg.output
    if prov.customize is not None:
        items.append((f"inputs/customize/{prov.customize.name}", prov.customize))
    if out.curtin_hooks is not None:
        items += _tree(out.curtin_hooks, "inputs/curtin_hooks")
    if prov.http_dir is not None:
        items += _tree(prov.http_dir, "inputs/http_dir")
    return items, facts


def _member(name: str, src: Path | bytes, root: Path) -> Member:
    if isinstance(src, bytes):
        return Member(name, hashlib.sha256(src).hexdigest(), len(src), 0o644)
    st = src.stat()
    mode = 0o755 if st.st_mode & 0o111 else 0o644
    return Member(name, cache.file_sha256(root, src), st.st_size, mode)


def _info(name: str, size: int, mode: int, mtime: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = size, mode, mtime, 0, 0, "", ""
    return ti


def _add(
    tar: tarfile.TarFile, name: str, src: Path | bytes, m: Member, mtime: int, counter: Counter
) -> None:
    with contextlib.ExitStack() as stack:
        f = io.BytesIO(src) if isinstance(src, bytes) else stack.enter_context(src.open("rb"))
        reader = Hashing(f, counter)
        tar.addfile(_info(name, m.size, m.mode, mtime), cast(IO[bytes], reader))
    if reader.hash.hexdigest() != m.sha256:
        raise SourceError(f"{name} changed while it was being bundled", hint="run again")


def _mtime(lk: Lock) -> int:
    """One fixed mtime for every member: the same lock gives the same archive."""
    if lk.cloud is not None:
        return lk.cloud.date
    return max(lk.bootstrap.release_dates.values(), default=0) if lk.bootstrap else 0


@contextlib.contextmanager
def _zstd_tar(raw: IO[bytes], level: int) -> Iterator[tuple[tarfile.TarFile, Hashing]]:
    """A streaming PAX tar writer over multi-threaded zstd; the hash is of the .zst bytes."""
    hashed = Hashing(raw)
    cctx = zstandard.ZstdCompressor(level=level, threads=-1, write_checksum=True)
    with (
        cctx.stream_writer(cast(IO[bytes], hashed), closefd=False) as zw,
        tarfile.open(
            fileobj=cast(IO[bytes], zw), mode="w|", format=tarfile.PAX_FORMAT, bufsize=CHUNK
        ) as tar,
    ):
        yield tar, hashed


def create_bundle(
    cfg: Config, lk: Lock, out: Path, *, progress: Progress, level: int = DEFAULT_LEVEL
) -> BundleInfo:
    """Write the bundle for ``lk`` to ``out`` (atomically); ``cfg`` must match the lock."""
    lock_check.check_locked(cfg, lk)
    items, facts = _collect(cfg, lk, progress)
    root = cfg.source.cache_dir
    members = [_member(name, src, root) for name, src in items]
    manifest = {
        "format": FORMAT,
        "tool_version": __version__,
        "lock_sha256": lk.digest,
        "series": lk.series,
        "arch": lk.arch,
        "base": lk.base,
        **facts,
        "members": [dataclasses.asdict(m) for m in members],
    }
    head = json.dumps(manifest, indent=1, sort_keys=True).encode()
    head_member = Member(MANIFEST, hashlib.sha256(head).hexdigest(), len(head), 0o644)
    counter = Counter(progress, sum(m.size for m in members) + len(head))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        with tmp.open("wb") as raw:
            with _zstd_tar(raw, level) as (tar, hashed):
                _add(tar, MANIFEST, head, head_member, _mtime(lk), counter)
                for (name, src), m in zip(items, members, strict=True):
                    _add(tar, name, src, m, _mtime(lk), counter)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return BundleInfo(out, hashed.hash.hexdigest(), out.stat().st_size, tuple(members))


__all__ = ["BundleInfo", "Counter", "Hashing", "Member", "create_bundle"]
