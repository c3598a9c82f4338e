"""Before a long netboot install: does the mirror have what the installer downloads?

A netboot initrd holds only the start of an installer; the rest of its components
are downloaded from the package mirror while installing. A mirror without them
(partial mirrors often skip them) makes the installer stop at a download error
after many minutes under TCG. :func:`check_mirror` finds that out in seconds: it
reads the initrd's members, the mirror's component index, lets the installer kind
say which components it will fetch, and asks the mirror (HTTP HEAD) for each, in
parallel: one requests session per worker thread (a session is not thread-safe),
each HEAD retried after a transient failure
(:func:`~imagebuilder.sources.download.with_retries`), so one dropped connection does
not make a busy mirror look unreachable. This module reads and asks; it installs
and boots nothing.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import lzma
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import requests

from ..errors import SourceError
from ..families.seam import InstallerKind
from ..sources import download

__all__ = ["check_mirror", "initrd_members", "missing_files"]

_SHOWN = 8


def _cpio_members(data: bytes) -> Iterable[tuple[str, bytes]]:
    """(name, content) of a "newc" cpio archive."""
    pos = 0
    while pos + 110 <= len(data):
        header = data[pos : pos + 110]
        if header[:6] not in (b"070701", b"070702"):
            break
        size = int(header[54:62], 16)
        namesize = int(header[94:102], 16)
        name = data[pos + 110 : pos + 110 + namesize - 1].decode("utf-8", "replace")
        start = (pos + 110 + namesize + 3) & ~3
        if name == "TRAILER!!!":
            break
        yield name, data[start : start + size]
        pos = (start + size + 3) & ~3


def initrd_members(initrd: Path) -> list[tuple[str, bytes]]:
    """(name, content) of every member of a gzip-compressed "newc" initrd."""
    return list(_cpio_members(gzip.decompress(initrd.read_bytes())))


def missing_files(
    mirror: str,
    files: Mapping[str, str],
    *,
    workers: int = 8,
    new_session: Callable[[], requests.Session] = download.session,
) -> list[str]:
    """Names whose file the mirror does not serve (HTTP HEAD answers 404/410).

    Each worker thread asks through its own session from ``new_session``; all are
    closed before returning. A mirror that stays unreachable or busy for a file
    after the retries is a :class:`~imagebuilder.errors.DownloadError`."""
    local = threading.local()
    sessions: list[requests.Session] = []
    lock = threading.Lock()

    def own_session() -> requests.Session:
        s: requests.Session | None = getattr(local, "session", None)
        if s is None:
            s = local.session = new_session()
            with lock:
                sessions.append(s)
        return s

    def absent(filename: str) -> bool:
        url = f"{mirror}/{filename}"
        resp = download.request(own_session(), "HEAD", url, allow_redirects=False)
        resp.close()
        return resp.status_code in (404, 410)

    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            flags = list(pool.map(absent, files.values()))
    finally:
        for s in sessions:
            s.close()
    return sorted(name for name, gone in zip(files, flags, strict=True) if gone)


def check_mirror(
    kind: InstallerKind, mirror: str, suite: str, arch: str, initrd: Path | None
) -> int:
    """SourceError naming the missing components, unless the mirror has every one the
    netboot installer in ``initrd`` will download (``None``: every one it may); returns
    how many were checked."""
    if kind.components is None:
        return 0
    mirror = mirror.rstrip("/")
    url = kind.components.index_url(mirror, suite, arch)
    with download.session() as session:
        got = download.get_small(session, url, missing_ok=True)
        if got is None:
            raise SourceError(
                f"{mirror} has no installer index for {suite} {arch} ({url})",
                hint=f"{kind.name} downloads its components from the mirror; "
                "pass a complete mirror with --mirror URL",
            )
        index = lzma.decompress(got[0]).decode("utf-8", "replace")
    needed = kind.components.needed(index, initrd_members(initrd) if initrd is not None else [])
    missing = missing_files(mirror, needed)
    if missing:
        shown = ", ".join(missing[:_SHOWN]) + (", ..." if len(missing) > _SHOWN else "")
        raise SourceError(
            f"the mirror {mirror} lacks {len(missing)} of the {len(needed)} installer "
            f"components {kind.name} downloads ({shown})",
            hint="the installer would stop at a failed download: use a complete "
            "mirror with --mirror URL",
        )
    return len(needed)
