"""Base images from the network or from disk, verified, through the cache.

:func:`fetch_base_image` turns a config into a :class:`BaseDisk`: the catalogue's
cloud image (or ``--base-image`` URL) is found in the cache by its URL record, with
no HTTP at all, or downloaded into ``partial/`` with resume (HTTP Range), checked
against the published checksum file whose signature ``gpgv`` checks against a
keyring, and renamed into the content-addressed cache. A local ``--base-image`` is
used in place after a sha256 check. ``--offline`` never touches the network.

This module must not print, exit, or know what happens to the disk afterwards; the
cache layout belongs to :mod:`imagebuilder.sources.cache`.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import email.utils
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests

from ..config.tree import Config
from ..errors import ChecksumError, OfflineError, SignatureError, SourceError
from ..families.seam import Release
from ..progress import Progress
from ..run import run
from . import cache, download
from .basedisk import BaseDisk
from .cache import UrlRecord

__all__ = [
    "Target",
    "default_keyring",
    "fetch_base_image",
    "fetch_target",
    "verify_signature",
]


@dataclass(frozen=True)
class _Target:
    url: str
    name: str
    sums_url: str | None  # the published checksum file, None when pinned
    sig_url: str | None  # its detached signature, None when none is published
    algo: str  # hash algorithm of the checksum file
    pinned: str | None  # --base-sha256
    serial: str | None
    #: Keyring for the signature when --keyring is not given; None: the release's default
    #: cloud-image keyring, if ``release_keyring``.
    keyring: Path | None = None
    release_keyring: bool = True


Target = _Target


def _is_url(s: str) -> bool:
    return urlsplit(s).scheme in ("http", "https")


def _algo(checksum_file: str) -> str:
    return "sha512" if "512" in checksum_file else "sha256"


def target(cfg: Config) -> _Target:
    src, rel = cfg.source, cfg.release
    if src.base_image:
        url = src.base_image
        name = Path(urlsplit(url).path).name or "base-image"
        if src.base_sha256:
            return _Target(url, name, None, None, "sha256", src.base_sha256, None)
        sig = urljoin(url, rel.signature_file) if rel.signature_file else None
        return _Target(
            url, name, urljoin(url, rel.checksum_file), sig, _algo(rel.checksum_file), None, None
        )
    folder = rel.image_dir_url(src.mirror, serial=src.serial, released=src.released)
    name = rel.image_filename(cfg.arch, released=src.released)
    sig = f"{folder}/{rel.signature_file}" if rel.signature_file else None
    return _Target(
        f"{folder}/{name}",
        name,
        f"{folder}/{rel.checksum_file}",
        sig,
        _algo(rel.checksum_file),
        None,
        src.serial,
    )


def default_keyring(release: Release) -> Path | None:
    """The distribution's cloud-image keyring, if it is installed on this host."""
    if release.default_keyring and Path(release.default_keyring).is_file():
        return Path(release.default_keyring)
    return None


def fetch_base_image(cfg: Config, progress: Progress, *, refresh: bool = False) -> BaseDisk:
    """The verified base image for ``cfg``, from the cache when it is there.

    ``refresh`` re-reads the published checksum file (a moving ``current/`` may have
    a new build) instead of trusting the URL record; unchanged content is not
    downloaded again.
    """
    src = cfg.source
    if src.base_image and not _is_url(src.base_image):
        return _local_image(cfg, Path(src.base_image).expanduser(), progress)
    return fetch_target(cfg, target(cfg), progress, refresh=refresh)


def fetch_target(cfg: Config, t: Target, progress: Progress, *, refresh: bool = False) -> BaseDisk:
    """The verified file ``t`` names, from the cache or downloaded (see fetch_base_image)."""
    src = cfg.source
    root = src.cache_dir
    if not refresh and (disk := _cached(cfg, t, progress)) is not None:
        return disk
    if src.offline:
        raise _offline_error(cfg, t)
    part = cache.partial_path(root, t.url, t.name)
    with cache.locked(part), download.session() as session:
        if not refresh and (disk := _cached(cfg, t, progress)) is not None:
            return disk  # another process finished it while we waited for the lock
        return _fetch(cfg, t, part, session, progress)


# ---- cache hits and local files ------------------------------------------------------


def _disk(rec: UrlRecord, blob: Path) -> BaseDisk:
    return BaseDisk(blob, rec.format, rec.sha256, rec.url, rec.date, "cloud")


def _cached(cfg: Config, t: _Target, progress: Progress) -> BaseDisk | None:
    root = cfg.source.cache_dir
    rec = cache.load_record(root, t.url)
    if rec is None or (t.pinned and rec.sha256 != t.pinned):
        return None
    if cfg.source.require_signature and rec.verified.startswith("unsigned"):
        if cfg.source.offline:
            raise SignatureError(
                f"the cached {rec.name} was not signature-checked, and --require-signature is set",
                hint="fetch it once online with --keyring FILE, or drop --require-signature",
            )
        return None  # check the signature now; the content is reused if it matches
    blob = cache.blob_path(root, rec.sha256)
    if not blob.is_file():
        return None
    digest = cache.file_sha256(root, blob)
    if digest != rec.sha256:
        progress.warning(f"cached {rec.name} is corrupt (sha256 {digest[:12]}...); dropping it")
        with contextlib.suppress(OSError):
            blob.unlink()
            cache.forget_record(root, t.url)
        return None
    progress.info(f"{rec.name}: in cache, sha256 {rec.sha256[:16]}... ({rec.verified})")
    return _disk(rec, blob)


def _local_image(cfg: Config, path: Path, progress: Progress) -> BaseDisk:
    if not path.is_file():
        raise SourceError(
            f"--base-image {path}: no such file",
            hint="give an existing image file, or an http(s):// URL",
        )
    digest = cache.file_sha256(cfg.source.cache_dir, path)
    pinned = cfg.source.base_sha256
    if pinned and digest != pinned:
        raise ChecksumError(
            f"--base-image {path}: sha256 is {digest}, not {pinned} (--base-sha256)",
            hint="check that this is the right file, or correct --base-sha256",
        )
    if not pinned:
        progress.info(f"{path.name}: local file, sha256 {digest[:16]}... (no --base-sha256 given)")
    real = path.resolve()
    return BaseDisk(
        real, cache.detect_format(real), digest, str(real), int(real.stat().st_mtime), "cloud"
    )


def _fetch_flags(cfg: Config) -> str:
    src, flags = cfg.source, []
    if cfg.arch != "amd64":
        flags.append(f"--arch {cfg.arch}")
    for opt, val in (("--serial", src.serial), ("--mirror", src.mirror)):
        if val:
            flags.append(f"{opt} {val}")
    if src.released:
        flags.append("--released")
    if src.base_image:
        flags.append(f"--base-image {src.base_image}")
    if src.base_sha256:
        flags.append(f"--base-sha256 {src.base_sha256}")
    return "".join(" " + f for f in flags)


def _offline_error(cfg: Config, t: _Target) -> OfflineError:
    root = cfg.source.cache_dir
    return OfflineError(
        f"--offline: {t.name} is not in the cache {root} (it comes from {t.url})",
        hint=f"on a connected host run 'imagebuilder fetch {cfg.series}{_fetch_flags(cfg)}"
        f" --cache-dir DIR' and copy DIR to {root}, or use a local file: --base-image PATH",
    )


# ---- download and verification -----------------------------------------------------


def _fetch(
    cfg: Config, t: _Target, part: Path, session: requests.Session, progress: Progress
) -> BaseDisk:
    root = cfg.source.cache_dir
    want, verified, sums_date = _expected(cfg, t, session, progress)
    sums = f"{t.algo}:{want}"
    if (rec := _known(root, t, sums, verified)) is not None:
        cache.save_record(root, rec)
        progress.info(f"{t.name}: same content already in cache, no download")
        return _disk(rec, cache.blob_path(root, rec.sha256))
    got, headers = download.download(
        session, t.url, part, progress, algos={"sha256", t.algo}, label=t.name
    )
    if got[t.algo] != want:
        _discard(part)
        raise ChecksumError(
            f"{t.name}: {t.algo} is {got[t.algo]}, but {t.sums_url or '--base-sha256'}"
            f" says {want}; the download was deleted",
            hint="run again to download afresh; if it persists the mirror is corrupt or"
            " stale: try another --mirror",
        )
    rec = UrlRecord(
        t.url,
        t.name,
        got["sha256"],
        part.stat().st_size,
        _date(t.serial, headers.get("Last-Modified"), sums_date),
        cache.detect_format(part),
        verified,
        sums=f"{t.algo}:{got[t.algo]}",
    )
    blob = cache.store_blob(root, part, rec.sha256)
    _discard(part)  # its .json
    cache.save_record(root, rec)
    progress.info(f"{t.name}: verified ({verified}), sha256 {rec.sha256[:16]}...")
    return _disk(rec, blob)


def _known(root: Path, t: _Target, sums: str, verified: str) -> UrlRecord | None:
    """A record for ``t`` when the content the checksum file names is already cached."""
    old = cache.load_record(root, t.url)
    known = old if old is not None and old.sums == sums else None
    if known is None and t.algo == "sha256":
        known = cache.find_record(root, sha256=sums[7:])  # e.g. current/ and its serial dir
    if known is None:
        return None
    blob = cache.blob_path(root, known.sha256)
    if not blob.is_file() or cache.file_sha256(root, blob) != known.sha256:
        return None
    return UrlRecord(t.url, t.name, known.sha256, known.size, known.date, known.format,
                     verified, sums=sums)  # fmt: skip


def _discard(part: Path) -> None:
    for p in (part, part.with_name(part.name + ".json")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _expected(
    cfg: Config, t: _Target, session: requests.Session, progress: Progress
) -> tuple[str, str, int | None]:
    """(digest in ``t.algo``, how it was verified, checksum file date) before downloading."""
    if t.pinned:
        return t.pinned, "pinned sha256 (--base-sha256)", None
    assert t.sums_url is not None
    sums_name = Path(urlsplit(t.sums_url).path).name
    got = download.get_small(session, t.sums_url, missing_ok=bool(cfg.source.base_image))
    if got is None:
        raise ChecksumError(
            f"no {sums_name} beside {t.url}, so it cannot be verified",
            hint="pass its sha256 with --base-sha256 HEX",
        )
    sums, headers = got
    verified = _check_signature(cfg, t, sums, session, progress)
    pattern = re.compile(rf"^([0-9a-fA-F]{{64,128}})\s+\*?{re.escape(t.name)}\s*$", re.M)
    m = pattern.search(sums.decode("utf-8", "replace"))
    if m is None:
        raise ChecksumError(
            f"{t.sums_url} has no entry for {t.name}",
            hint="the mirror may be mid-update: try again later, or pin --serial",
        )
    return m.group(1).lower(), verified, _date(None, headers.get("Last-Modified"), None)


def _check_signature(
    cfg: Config, t: _Target, sums: bytes, session: requests.Session, progress: Progress
) -> str:
    src = cfg.source
    assert t.sums_url is not None
    sums_name = Path(urlsplit(t.sums_url).path).name
    keyring = src.keyring or t.keyring
    if keyring is None and t.release_keyring:
        keyring = default_keyring(cfg.release)
    if t.sig_url is None:
        problem = f"{cfg.release.distro} publishes no signature for {sums_name}"
    elif keyring is None:
        problem = f"no keyring to check {sums_name}.gpg with"
    else:
        got = download.get_small(session, t.sig_url, missing_ok=True)
        if got is not None:
            verify_signature(sums, got[0], keyring, what=t.sums_url)
            return f"gpg {keyring}"
        if src.keyring is not None or src.require_signature:
            raise SignatureError(
                f"{t.sig_url} is missing, so {sums_name} cannot be signature-checked",
                hint="check --mirror (it should mirror the .gpg files too)",
            )
        problem = f"{t.sig_url} is missing"
    if src.require_signature:
        raise SignatureError(
            f"{problem}, and --require-signature is set",
            hint="pass --keyring FILE with the signing key (Ubuntu's is in the host package"
            " ubuntu-cloudimage-keyring), or pin --base-image with --base-sha256",
        )
    progress.warning(
        f"UNVERIFIED SOURCE: {problem}; {t.name} is checked against {t.sums_url} only, which"
        " catches corruption but not a tampered mirror. Use --keyring FILE, or"
        " --require-signature to make this fatal",
        once=f"unsigned {t.sums_url}",
    )
    return f"unsigned {sums_name}"


def _dearmor(raw: bytes) -> bytes:
    """Binary OpenPGP packets from ASCII-armored key blocks (gpgv reads binary keyrings)."""
    out = b""
    for block in re.findall(rb"-----BEGIN PGP [A-Z ]+-----\r?\n(.*?)-----END PGP", raw, re.S):
        lines = [ln.strip() for ln in block.splitlines()]
        if b"" in lines:  # armor headers end at the first blank line
            lines = lines[lines.index(b"") + 1 :]
        out += base64.b64decode(b"".join(ln for ln in lines if ln and not ln.startswith(b"=")))
    return out


def verify_signature(data: bytes, signature: bytes, keyring: Path, *, what: str) -> None:
    """Check a detached signature with gpgv; SignatureError unless a key in ``keyring`` made it."""
    try:
        raw = keyring.read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read keyring {keyring}: {exc.strerror}") from None
    with tempfile.TemporaryDirectory(prefix="imagebuilder-gpgv-") as tmp:
        d = Path(tmp)
        kr = keyring.resolve()
        if raw.lstrip().startswith(b"-----BEGIN PGP"):
            kr = d / "keyring.gpg"
            kr.write_bytes(_dearmor(raw))
        (d / "data").write_bytes(data)
        (d / "data.sig").write_bytes(signature)
        argv = ["gpgv", "--homedir", str(d), "--status-fd", "1", "--keyring", str(kr),
                str(d / "data.sig"), str(d / "data")]  # fmt: skip
        proc = run(argv, check=False)
    status = proc.stdout.decode("utf-8", "replace")
    if proc.returncode == 0 and "[GNUPG:] VALIDSIG" in status:
        return
    if "[GNUPG:] BADSIG" in status:
        reason = "the signature does not match (file altered or corrupt)"
    elif m := re.search(r"\[GNUPG:\] NO_PUBKEY (\w+)", status):
        reason = f"signed by key {m.group(1)}, which is not in {keyring}"
    elif m := re.search(r"\[GNUPG:\] (EXPKEYSIG|REVKEYSIG|EXPSIG)", status):
        reason = {"EXPKEYSIG": "the signing key has expired", "REVKEYSIG": "the key is revoked",
                  "EXPSIG": "the signature has expired"}[m.group(1)]  # fmt: skip
    else:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        reason = tail[0] if tail else f"gpgv exit {proc.returncode}"
    raise SignatureError(
        f"bad signature on {what}: {reason}",
        hint="the mirror or the download was tampered with or is broken; check --mirror and"
        " --keyring",
    )


def _date(serial: str | None, last_modified: str | None, fallback: int | None) -> int:
    """Epoch seconds of a build: its serial (20240507, release-20240507, 20240507-1740),
    else the server's Last-Modified, else ``fallback``, else now."""
    if serial and (m := re.search(r"(\d{8})(?:-(\d{4}))?", serial)):
        with contextlib.suppress(ValueError):
            stamp = dt.datetime.strptime(m.group(1) + (m.group(2) or "0000"), "%Y%m%d%H%M")
            return int(stamp.replace(tzinfo=dt.timezone.utc).timestamp())
    if last_modified:
        with contextlib.suppress(TypeError, ValueError):
            return int(email.utils.parsedate_to_datetime(last_modified).timestamp())
    return fallback if fallback is not None else int(time.time())
