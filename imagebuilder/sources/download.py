"""HTTP for the cache: small files, and large downloads that resume after a cut.

:func:`download` streams a URL into a ``.partial`` file, hashing as it writes, and
continues with an HTTP ``Range`` request (guarded by ``If-Range``) after a broken
connection, in this run or the next. Every request to a mirror goes through
:func:`with_retries`: a refused, reset or timed-out connection and an HTTP 5xx/429
are tried again after a short, bounded backoff (:data:`RETRY`), a 404 never. What
still fails becomes :class:`~imagebuilder.errors.DownloadError` with a hint. Proxies
come from the environment (requests honours ``HTTP(S)_PROXY``/``NO_PROXY``).

This module knows nothing about images, checksum files or signatures, and must not
rename anything into the cache: ``sources`` decides what a finished file is worth.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
import urllib3

from ..errors import DownloadError
from ..progress import Progress
from ..version import __version__
from .cache import CHUNK, read_json, write_json

USER_AGENT = f"imagebuilder/{__version__} python-requests/{requests.__version__}"
TIMEOUT = (15.0, 60.0)  # connect, read (between bytes)
MAX_ATTEMPTS = 5  # per download, resuming after each broken connection
SMALL_LIMIT = 8 << 20  # checksum and signature files
NET_HINT = "check --mirror and HTTP(S)_PROXY/NO_PROXY, or use --offline with a filled cache"
BUSY = frozenset({429, 500, 502, 503, 504})  # answers worth asking again

T = TypeVar("T")


def session() -> requests.Session:
    """A session with our User-Agent; proxies and CA bundle from the environment."""
    s = requests.Session()
    s.headers["User-Agent"] = USER_AGENT
    return s


def net_error(url: str, exc: Exception) -> DownloadError:
    host = urlsplit(url).netloc
    text = str(exc)
    m = re.search(
        r"\[Errno -?\d+\] [^'\")]+|Connection (?:refused|reset by peer)|Name or service not known"
        r"|Remote end closed connection without response",
        text,
    )
    reason = m.group(0).strip() if m else type(exc).__name__
    if isinstance(exc, requests.exceptions.ProxyError):
        msg = f"the proxy failed for {url}: {reason}"
    elif isinstance(exc, requests.exceptions.SSLError):
        msg = f"TLS failed with {host}: {reason}"
    elif isinstance(exc, requests.exceptions.Timeout):
        msg = f"{host} timed out ({url})"
    else:
        msg = f"cannot reach {host}: {reason} ({url})"
    return DownloadError(msg, hint=NET_HINT)


def http_error(url: str, resp: requests.Response) -> DownloadError:
    hint = NET_HINT
    if resp.status_code in (403, 404, 410):
        parent = url.rsplit("/", 2)[0] + "/"
        hint = f"check the series, --arch, --serial (see {parent}) and --mirror"
    return DownloadError(f"{url}: HTTP {resp.status_code} {resp.reason}", hint=hint)


@dataclass(frozen=True)
class Retry:
    """How often and how long to wait before asking a mirror again.

    ``attempts`` tries in all, waiting ``first`` seconds after the first failure and
    twice as long after each next one, at most ``cap``; no new try starts once
    ``budget`` seconds have passed since the first. ``sleep`` is replaceable for tests.
    """

    attempts: int = 4
    first: float = 0.25
    cap: float = 2.0
    budget: float = 30.0
    sleep: Callable[[float], None] = time.sleep


#: The policy :func:`with_retries` uses unless given another (tests replace it).
RETRY = Retry()


class Busy(Exception):
    """The mirror answered with a status worth asking again for (:data:`BUSY`)."""

    def __init__(self, resp: requests.Response) -> None:
        super().__init__(f"HTTP {resp.status_code}")
        self.resp = resp


_TRANSIENT = (
    Busy,
    requests.ConnectionError,  # refused, reset, dropped without an answer
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError,  # the same, met while reading a body
    urllib3.exceptions.TimeoutError,
)


def _transient(exc: Exception) -> bool:
    """A failure another try may not meet: refused, reset, dropped, timed out, busy."""
    if isinstance(exc, requests.exceptions.SSLError):
        return False  # a certificate does not get better by asking again
    return isinstance(exc, _TRANSIENT)


def not_busy(resp: requests.Response) -> requests.Response:
    """``resp``, unless its status is one to retry: then closed, as :class:`Busy`."""
    if resp.status_code in BUSY:
        resp.close()
        raise Busy(resp)
    return resp


def with_retries(url: str, call: Callable[[], T], *, retry: Retry | None = None) -> T:
    """``call()`` (one request to ``url``), tried again after a transient failure.

    A persistent one becomes :class:`DownloadError` (:func:`net_error` or, for a
    :class:`Busy` answer, :func:`http_error`); any other exception passes through at
    once, so a 404 is asked for only once.
    """
    policy = retry or RETRY
    start = time.monotonic()
    attempt = 1
    while True:
        try:
            return call()
        except (requests.RequestException, urllib3.exceptions.HTTPError, Busy) as exc:
            last = attempt >= policy.attempts or time.monotonic() - start >= policy.budget
            if last or not _transient(exc):
                if isinstance(exc, Busy):
                    raise http_error(url, exc.resp) from exc
                raise net_error(url, exc) from exc
        policy.sleep(min(policy.first * 2 ** (attempt - 1), policy.cap))
        attempt += 1


def request(session: requests.Session, method: str, url: str, **kwargs: Any) -> requests.Response:
    """``session.request`` with :data:`TIMEOUT`, through :func:`with_retries`."""
    return with_retries(
        url, lambda: not_busy(session.request(method, url, timeout=TIMEOUT, **kwargs))
    )


def get_small(
    session: requests.Session, url: str, *, missing_ok: bool
) -> tuple[bytes, Mapping[str, str]] | None:
    """A small file's bytes and headers (``None`` if absent and ``missing_ok``)."""

    def fetch() -> tuple[bytes, Mapping[str, str]] | None:
        with not_busy(session.get(url, timeout=TIMEOUT, stream=True)) as resp:
            if missing_ok and resp.status_code in (404, 410):
                return None
            if resp.status_code >= 400:
                raise http_error(url, resp)
            data = resp.raw.read(SMALL_LIMIT + 1, decode_content=True)
            if len(data) > SMALL_LIMIT:
                raise DownloadError(f"{url} is larger than {SMALL_LIMIT} bytes", hint=NET_HINT)
            return data, resp.headers

    return with_retries(url, fetch)


def content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total) from ``bytes 100-199/1000`` or ``bytes */1000``."""
    m = re.match(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not m:
        return None, None
    first = int(m.group(1)) if m.group(1) else None
    return first, int(m.group(2)) if m.group(2) != "*" else None


class Hasher:
    """sha256 (and the checksum file's algorithm) of the bytes in the partial file."""

    def __init__(self, algos: set[str]) -> None:
        self.algos = algos
        self.reset()

    def reset(self) -> None:
        self.hashes = {a: hashlib.new(a) for a in self.algos}
        self.offset = 0

    def update(self, block: bytes) -> None:
        for h in self.hashes.values():
            h.update(block)
        self.offset += len(block)

    def catch_up(self, part: Path, offset: int) -> None:
        """Hash the file's first ``offset`` bytes unless already done (resume after a restart)."""
        if self.offset == offset:
            return
        self.reset()
        with part.open("rb") as f:
            while self.offset < offset and (block := f.read(min(CHUNK, offset - self.offset))):
                self.update(block)

    def hexdigests(self) -> dict[str, str]:
        return {a: h.hexdigest() for a, h in self.hashes.items()}


def _blocks(resp: requests.Response) -> Iterator[bytes]:
    """The body as it arrives, undecoded, so that a cut loses no byte already received."""
    raw = resp.raw
    read1 = getattr(raw, "read1", None)  # urllib3 >= 2.3
    while block := (read1(CHUNK, decode_content=False) if read1 else raw.read(64 << 10)):
        yield block


def download(
    session: requests.Session,
    url: str,
    part: Path,
    progress: Progress,
    *,
    algos: set[str],
    label: str,
) -> tuple[dict[str, str], Mapping[str, str]]:
    """Fetch ``url`` into ``part``, resuming with Range; return its digests and headers.

    Each request is made through :func:`request` (so a refused connection or a 5xx is
    retried before it counts); a connection that breaks in the body is resumed up to
    :data:`MAX_ATTEMPTS` times in this call (at once when the last attempt made
    progress); after that the partial file stays for the next run to resume.
    ``label`` names the counter.
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    meta_path = part.with_name(part.name + ".json")
    hasher = Hasher(algos)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        offset = part.stat().st_size if part.exists() else 0
        meta = read_json(meta_path) or {}
        headers = {"Accept-Encoding": "identity"}
        if offset and meta.get("url") == url:
            headers["Range"] = f"bytes={offset}-"
            if meta.get("validator"):
                headers["If-Range"] = str(meta["validator"])
        elif offset:
            part.unlink()
            offset = 0
        received, broke = 0, ""
        try:
            with request(session, "GET", url, headers=headers, stream=True) as resp:
                first, total = content_range(resp.headers.get("Content-Range"))
                if resp.status_code == 416 and offset and total == offset:
                    hasher.catch_up(part, offset)  # finished before, never renamed
                    return hasher.hexdigests(), resp.headers
                if resp.status_code >= 400:
                    if resp.status_code != 416:
                        raise http_error(url, resp)
                    part.unlink()
                    continue
                if resp.status_code != 206 or first != offset:
                    offset = 0  # whole file (new upstream build, or no Range support)
                    part.write_bytes(b"")
                length = resp.headers.get("Content-Length")
                total = offset + int(length) if length and length.isdigit() else total
                validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
                write_json(meta_path, {"url": url, "validator": validator, "total": total})
                hasher.catch_up(part, offset)
                try:
                    with part.open("ab") as f:
                        for block in _blocks(resp):
                            f.write(block)
                            hasher.update(block)
                            offset += len(block)
                            received += len(block)
                            progress.counter(label, offset, total)
                        f.flush()
                        os.fsync(f.fileno())
                except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
                    broke = "connection broke"
                if not broke and (total is None or offset == total):
                    return hasher.hexdigests(), resp.headers
                broke = broke or "connection closed early"
        except requests.RequestException as exc:
            if attempt == MAX_ATTEMPTS:
                raise net_error(url, exc) from exc
            broke = str(net_error(url, exc))
        if attempt < MAX_ATTEMPTS:
            progress.info(f"{label}: {broke} at {offset} bytes; resuming ({attempt + 1}/"
                          f"{MAX_ATTEMPTS})")  # fmt: skip
            if not received:
                time.sleep(min(0.5 * 2**attempt, 8.0))
    raise DownloadError(
        f"download of {url} kept breaking off ({broke}); {offset} bytes kept in {part}",
        hint=f"run the same command again to resume; if it keeps failing, {NET_HINT}",
    )
