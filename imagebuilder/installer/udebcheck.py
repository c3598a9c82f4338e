"""Before a long Debian install: does the mirror have the installer's components?

The netboot initrd holds only the start of the Debian installer; everything else
(partman, grub-installer, apt-setup, finish-install, kernel module udebs...) is
downloaded from the mirror's ``main/debian-installer`` section while installing.
A mirror without those ``.udeb`` files (partial mirrors often skip them) makes the
installer stop at "Downloading a file failed" after many minutes under TCG.
:func:`check_mirror` finds that out in seconds: it reads the initrd's own package
list, the mirror's udeb index, and asks the mirror (HTTP HEAD) for every udeb of
priority standard or higher the initrd does not already have, in parallel: one
requests session per worker thread (a session is not thread-safe), each HEAD
retried after a transient failure (:func:`~imagebuilder.sources.download.with_retries`), so
one dropped connection does not make a busy mirror look unreachable. This module
reads and asks; it installs and boots nothing.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import lzma
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import requests

from ..errors import SourceError
from ..sources import download

__all__ = ["check_mirror", "initrd_packages", "missing_files", "needed_udebs"]

_PRIORITIES = ("required", "important", "standard")
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


def initrd_packages(initrd: Path) -> tuple[set[str], str | None]:
    """Packages the installer initrd already has, and its kernel ABI (``6.1.0-50-amd64``)."""
    data = gzip.decompress(initrd.read_bytes())
    have: set[str] = set()
    abi = None
    for name, content in _cpio_members(data):
        name = name.removeprefix("./")
        if name == "var/lib/dpkg/status":
            have |= set(re.findall(r"^Package: (\S+)", content.decode("utf-8", "replace"), re.M))
        elif abi is None and (m := re.match(r"lib/modules/([^/]+)/?$", name)):
            abi = m.group(1)
    return have, abi


def _stanzas(index: str) -> Iterable[dict[str, str]]:
    for block in index.split("\n\n"):
        fields = dict(re.findall(r"^([\w-]+): *(.*)$", block, re.M))
        if "Package" in fields:
            yield fields


def needed_udebs(index: str, have: set[str], abi: str | None) -> dict[str, str]:
    """Udebs (name -> Filename) the installer will download: priority standard or higher,
    not in the initrd, kernel modules only for the initrd's kernel."""
    out: dict[str, str] = {}
    for st in _stanzas(index):
        name = st["Package"]
        if name in have or st.get("Priority") not in _PRIORITIES or "Filename" not in st:
            continue
        if name.endswith("-di") and (abi is None or f"-{abi}-di" not in name):
            continue
        out[name] = st["Filename"]
    return out


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


def check_mirror(mirror: str, suite: str, arch: str, initrd: Path | None) -> int:
    """SourceError naming the missing components, unless the mirror has every udeb the
    netboot installer in ``initrd`` will download (``None``: every standard udeb but
    kernel modules); returns how many were checked."""
    mirror = mirror.rstrip("/")
    url = f"{mirror}/dists/{suite}/main/debian-installer/binary-{arch}/Packages.xz"
    with download.session() as session:
        got = download.get_small(session, url, missing_ok=True)
        if got is None:
            raise SourceError(
                f"{mirror} has no installer index for {suite} {arch} ({url})",
                hint="the Debian installer needs a mirror with main/debian-installer; "
                "pass a complete mirror with --mirror URL",
            )
        index = lzma.decompress(got[0]).decode("utf-8", "replace")
        have, abi = initrd_packages(initrd) if initrd is not None else (set(), None)
    needed = needed_udebs(index, have, abi)
    missing = missing_files(mirror, needed)
    if missing:
        shown = ", ".join(missing[:_SHOWN]) + (", ..." if len(missing) > _SHOWN else "")
        raise SourceError(
            f"the mirror {mirror} lacks {len(missing)} of the {len(needed)} installer "
            f"components the Debian installer downloads ({shown})",
            hint="the installer would stop at 'Downloading a file failed': use a complete "
            "Debian mirror with --mirror URL",
        )
    return len(needed)
