"""``imagebuilder bundle import``: a bundle into the cache of an air-gapped host.

:func:`import_bundle` streams a bundle made by ``bundle.create_bundle``: every
member is written to a staging directory inside the cache and checked against
``bundle.json`` (sha256 and size) before anything is installed; the checksum
file must list the image, and its signature is checked with a keyring (the one
given, else the distribution's if installed, else the bundle's own, with a
warning). Then blobs and URL records (``cache``) and the bootstrap base disk
(``<cache>/bootstrap/<name>/``, as ``bootstrap`` leaves it) are renamed into
place, and the lock, keyrings, checksum files and inputs go to
``<cache>/bundles/<lock digest>/``. A build with ``--offline --locked`` then needs
no network at all.

Never prints; a damaged bundle raises ChecksumError and installs nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

import zstandard

from ..errors import ChecksumError, ConfigError, SourceError
from ..families import catalogue
from ..progress import Progress
from ..sources import cache, images
from .bundle_create import CHUNK, FORMAT, LOCK_NAME, MANIFEST, Counter, Hashing, Member
from .lockfile import Lock, from_toml

_SAFE = re.compile(r"^[A-Za-z0-9._+@=-][A-Za-z0-9._+@=,-]*$")


@dataclass(frozen=True)
class ImportResult:
    lock: Lock
    lock_path: Path  # build with --offline --locked --lock <this>
    bundle_dir: Path
    base_image: Path | None  # pass as --base-image (only when the lock pins a local file)
    customize: Path | None  # pass as --customize
    curtin_hooks: Path | None  # pass as --curtin-hooks
    http_dir: Path | None  # pass as --http-dir
    installed: tuple[str, ...]  # what went into the cache, for the user


def _damaged(path: Path, what: str) -> SourceError:
    return ChecksumError(
        f"bundle {path}: {what}",
        hint="the bundle is damaged or incomplete: copy it again from the host that made it",
    )


def _safe(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if (
        p.is_absolute()
        or not p.parts
        or not all(_SAFE.match(x) and x not in (".", "..") for x in p.parts)
    ):
        raise ConfigError(
            f"bundle member name {name!r} is not allowed",
            hint="use a bundle made by 'imagebuilder bundle create'",
        )
    return p


def _read_manifest(path: Path, tar: tarfile.TarFile) -> tuple[dict[str, Any], dict[str, Member]]:
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isreg() or first.size > 64 << 20:
        raise _damaged(path, f"it does not start with {MANIFEST}")
    f = tar.extractfile(first)
    assert f is not None
    try:
        manifest = json.loads(f.read())
        members = {m["name"]: Member(**m) for m in manifest["members"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise _damaged(path, f"unreadable {MANIFEST} ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise ConfigError(
            f"bundle {path} has format {manifest.get('format')}, this imagebuilder reads {FORMAT}",
            hint="import it with the imagebuilder version that "
            f"made it ({manifest.get('tool_version')})",
        )
    for name in members:
        _safe(name)
    return manifest, members


def _unpack(
    path: Path, staging: Path, progress: Progress
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Every member into ``staging`` (under numbered names), each checked against the manifest."""
    staged: dict[str, Path] = {}
    with path.open("rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as zr:
        try:
            with tarfile.open(fileobj=cast(IO[bytes], zr), mode="r|", bufsize=CHUNK) as tar:
                manifest, members = _read_manifest(path, tar)
                counter = Counter(progress, sum(m.size for m in members.values()))
                while (ti := tar.next()) is not None:
                    m = members.get(ti.name)
                    if m is None or ti.name in staged or not ti.isreg():
                        raise _damaged(path, f"unexpected member {ti.name!r}")
                    dest = staging / f"{len(staged):05d}"
                    src = tar.extractfile(ti)
                    assert src is not None
                    with dest.open("wb") as f:
                        writer = Hashing(f, counter)
                        shutil.copyfileobj(src, cast(IO[bytes], writer), CHUNK)
                    if writer.hash.hexdigest() != m.sha256 or dest.stat().st_size != m.size:
                        raise _damaged(path, f"{ti.name} does not match its sha256")
                    dest.chmod(m.mode)
                    staged[ti.name] = dest
        except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
            raise _damaged(path, f"not a readable .tar.zst ({exc})") from None
    missing = sorted(set(members) - set(staged))
    if missing:
        raise _damaged(path, f"members missing: {', '.join(missing[:5])}")
    return manifest, staged


def _verify_sums(
    lk: Lock,
    staged: dict[str, Path],
    record: dict[str, Any],
    keyring: Path | None,
    progress: Progress,
) -> str:
    """Check the bundled checksum file lists the image, and its signature; say how it went."""
    assert lk.cloud is not None
    rel = catalogue.get(lk.series)
    sums = staged.get(f"checksums/{rel.checksum_file}")
    if sums is None:
        return "no checksum file bundled"
    want = str(record.get("sums") or f"sha256:{lk.cloud.sha256}").split(":", 1)[1]
    line = re.search(
        rf"^{re.escape(want)}\s+\*?{re.escape(lk.cloud.name)}\s*$",
        sums.read_text(errors="replace"),
        re.M | re.I,
    )
    if line is None:
        raise ChecksumError(
            f"the bundled {rel.checksum_file} does not list {lk.cloud.name} with {want[:16]}...",
            hint="the bundle was tampered with",
        )
    sig = staged.get(f"checksums/{rel.signature_file}") if rel.signature_file else None
    if sig is None:
        return f"listed in the bundled {rel.checksum_file} (unsigned)"
    bundled = sorted(p for n, p in staged.items() if n.startswith("keyrings/"))
    host = keyring or images.default_keyring(rel)
    use = host or (bundled[0] if bundled else None)
    if use is None:
        progress.warning(f"no keyring to check {rel.signature_file}: pass --keyring FILE")
        return f"listed in {rel.checksum_file}; signature not checked"
    images.verify_signature(sums.read_bytes(), sig.read_bytes(), use, what=rel.checksum_file)
    if host is None:
        progress.warning(
            "the checksum signature was checked with the bundle's own keyring: "
            "that proves the bundle is intact, not where it came from; pass "
            "--keyring FILE to check it against a key you trust"
        )
        return "gpg (bundle's own keyring)"
    return f"gpg {host}"


def _install_bootstrap(root: Path, name: str, staged: dict[str, Path], progress: Progress) -> Path:
    """The base disk into ``<cache>/bootstrap/<name>/`` the way bootstrap.py puts it there."""
    parent = root / "bootstrap"
    parent.mkdir(parents=True, exist_ok=True)
    dest = parent / name
    with cache.locked(dest):
        if dest.exists():
            progress.warning(f"replacing the cached bootstrap base {name} with the bundle's")
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=parent))
        try:
            for leaf in ("meta.json", "disk.qcow2"):
                os.replace(staged[f"bootstrap/{name}/{leaf}"], work / leaf)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(work, dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return dest


def import_bundle(
    path: Path, cache_dir: Path, *, progress: Progress, keyring: Path | None = None
) -> ImportResult:
    """Load the bundle at ``path`` into ``cache_dir``; nothing is installed unless all of it
    checks out. ``keyring`` checks the cloud image's checksum signature (default: the
    distribution's keyring if installed on this host, else the bundle's own)."""
    if not path.is_file():
        raise ConfigError(f"bundle {path} not found", hint="give the .tar.zst file to import")
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=cache_dir))
    try:
        manifest, staged = _unpack(path, staging, progress)
        lk = from_toml(staged[LOCK_NAME].read_text())
        if lk.digest != manifest.get("lock_sha256"):
            raise _damaged(path, "its lock does not match bundle.json")
        installed: list[str] = []
        base_image = None
        if lk.cloud is not None:
            record = dict((manifest.get("cloud") or {}).get("record") or {})
            how = _verify_sums(lk, staged, record, keyring, progress)
            blob = cache.store_blob(cache_dir, staged[f"cloud/{lk.cloud.name}"], lk.cloud.sha256)
            base_image = None if record else blob  # a local --base-image has no URL record
            if record:
                record["verified"] = f"{record.get('verified')}; imported from bundle ({how})"
                cache.save_record(cache_dir, cache.UrlRecord(**record))
            installed.append(f"{lk.cloud.name}: {blob} ({how})")
        if lk.bootstrap is not None:
            name = str((manifest.get("bootstrap") or {}).get("name"))
            dest = _install_bootstrap(cache_dir, _safe(name).name, staged, progress)
            installed.append(f"bootstrap base {name}: {dest}")
        bdir = cache_dir / "bundles" / lk.digest[:16]
        work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=staging))
        for name, src in staged.items():
            if name == LOCK_NAME or name.startswith(("keyrings/", "inputs/", "checksums/")):
                dest = work / _safe(name)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dest)
        if bdir.exists():
            shutil.rmtree(bdir)
        bdir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work, bdir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    inputs = bdir / "inputs"
    script = next(iter(sorted((inputs / "customize").glob("*"))), None)
    return ImportResult(
        lock=dataclasses.replace(lk, path=bdir / LOCK_NAME),
        lock_path=bdir / LOCK_NAME,
        bundle_dir=bdir,
        base_image=base_image,
        customize=script,
        curtin_hooks=inputs / "curtin_hooks" if (inputs / "curtin_hooks").is_dir() else None,
        http_dir=inputs / "http_dir" if (inputs / "http_dir").is_dir() else None,
        installed=tuple(installed),
    )


__all__ = ["ImportResult", "import_bundle"]
