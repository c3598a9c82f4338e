"""A local stand-in for cloud-images.ubuntu.com and Debian's cloud image tree.

:class:`CloudImages` serves generated files over HTTP on 127.0.0.1, laid out like
the real mirrors (``/<series>/current/<series>-server-cloudimg-amd64.img`` beside
``SHA256SUMS`` with ``<hex> *<file>`` lines and a detached ``SHA256SUMS.gpg``;
``/<codename>/latest/debian-<ver>-genericcloud-<arch>.qcow2`` beside ``SHA512SUMS``).
It honours ``Range``/``If-Range``, records every request, and can cut a response
part-way to simulate a broken connection. :class:`GpgKeys` makes throwaway signing
keys with the real ``gpg`` in a private GNUPGHOME.

Test-only: must never be imported by the package, nor reach the network.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import random
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

from imagebuilder.run import run

#: Last-Modified of every served file unless said otherwise (2024-05-07 12:00 UTC).
MTIME = 1715083200
QCOW2_HEADER = b"QFI\xfb\x00\x00\x00\x03"


def image_bytes(size: int, seed: int = 0) -> bytes:
    """``size`` bytes starting with a qcow2 magic, the rest pseudo-random."""
    return QCOW2_HEADER + random.Random(seed).randbytes(size - len(QCOW2_HEADER))


class GpgKeys:
    """Two throwaway ed25519 keys: a trusted signer (exported to keyrings) and a stranger."""

    SIGNER = "Imagebuilder Test Signer <signer@example.invalid>"
    STRANGER = "Stranger <stranger@example.invalid>"

    def __init__(self, home: Path) -> None:
        self.home = home
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        for uid in (self.SIGNER, self.STRANGER):
            self._gpg("--quick-generate-key", uid, "ed25519", "sign", "never")
        #: Binary keyring (what distributions ship) holding only the signer's key.
        self.keyring = home / "trusted.gpg"
        self.keyring.write_bytes(self._gpg("--export", "signer@example.invalid"))
        #: The same key ASCII-armored.
        self.armored_keyring = home / "trusted.asc"
        self.armored_keyring.write_bytes(self._gpg("--armor", "--export", "signer@example.invalid"))

    def _gpg(self, *args: str, data: bytes | None = None) -> bytes:
        argv = ["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "", *args]
        return run(argv, input=data, env={"GNUPGHOME": str(self.home)}).stdout

    def sign(self, data: bytes, *, stranger: bool = False) -> bytes:
        """An armored detached signature, like Ubuntu's SHA256SUMS.gpg."""
        who = "stranger@example.invalid" if stranger else "signer@example.invalid"
        return self._gpg("--armor", "--local-user", who, "--detach-sign", data=data)

    def clearsign(self, data: bytes, *, stranger: bool = False) -> bytes:
        """A clear-signed copy of ``data``, like a Debian mirror's InRelease."""
        who = "stranger@example.invalid" if stranger else "signer@example.invalid"
        return self._gpg("--local-user", who, "--clearsign", data=data)

    def close(self) -> None:
        """Stop the gpg-agent that gpg started for this home."""
        run(["gpgconf", "--kill", "all"], env={"GNUPGHOME": str(self.home)}, check=False)


@dataclass
class Hit:
    """One request the server answered."""

    method: str
    path: str
    range: str | None
    status: int
    sent: int  # body bytes written
    agent: str = ""


@dataclass
class FakeFile:
    data: bytes
    mtime: int = MTIME

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.data).hexdigest()[:16] + '"'

    @property
    def last_modified(self) -> str:
        return email.utils.formatdate(self.mtime, usegmt=True)


@dataclass
class FakeImage:
    """An image the server publishes, with where and what."""

    url: str
    path: str  # server path of the image
    folder: str  # server path of its directory
    data: bytes
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256(self.data).hexdigest()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    #: listen() backlog: socketserver's default of 5 refuses connections when a client
    #: (the udeb preflight) opens several at once, which no real mirror does.
    request_queue_size = 64
    fake: CloudImages


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, *, head: bool) -> None:
        fake = self.server.fake
        path = unquote(urlsplit(self.path).path)
        rng = self.headers.get("Range")
        hit = Hit(self.command, path, rng, 404, 0, self.headers.get("User-Agent", ""))
        fake._record(hit)
        f = fake.files.get(path)
        if f is None:
            self._small(404, b"not found\n")
            return
        size = len(f.data)
        start, end, hit.status = 0, size - 1, 200
        if_range = self.headers.get("If-Range")
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m and if_range in (None, f.etag, f.last_modified):
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else size - 1, size - 1)
            if start >= size:
                hit.status = 416
                self._small(416, b"", {"Content-Range": f"bytes */{size}"})
                return
            hit.status = 206
        body = f.data[start : end + 1]
        cut = fake._take_cut(path)
        self.send_response(hit.status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Last-Modified", f.last_modified)
        self.send_header("ETag", f.etag)
        self.send_header("Accept-Ranges", "bytes")
        if hit.status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            return
        n = len(body) if cut is None else min(cut, len(body))
        with contextlib.suppress(OSError):
            self.wfile.write(body[:n])
            self.wfile.flush()
        hit.sent = n
        if cut is not None:  # a broken connection: fewer bytes than Content-Length, then EOF
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _small(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class CloudImages:
    """The fake mirror. Use as a context manager; ``url`` is its base URL."""

    def __init__(self, keys: GpgKeys | None = None) -> None:
        self.keys = keys
        self.files: dict[str, FakeFile] = {}
        self.hits: list[Hit] = []
        self._cuts: dict[str, list[int]] = {}
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> CloudImages:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    # ---- what happened ----------------------------------------------------------
    def _record(self, hit: Hit) -> None:
        with self._lock:
            self.hits.append(hit)

    def requests_for(self, path: str) -> list[Hit]:
        with self._lock:
            return [h for h in self.hits if h.path == path]

    def count(self, path: str | None = None) -> int:
        """Requests so far, for one path or in all."""
        with self._lock:
            return sum(1 for h in self.hits if path is None or h.path == path)

    # ---- what to serve ------------------------------------------------------------
    def put(self, path: str, data: bytes, mtime: int = MTIME) -> None:
        self.files[path] = FakeFile(data, mtime)

    def cut(self, path: str, after: int, times: int = 1) -> None:
        """The next ``times`` GETs of ``path`` send only ``after`` body bytes, then drop."""
        with self._lock:
            self._cuts.setdefault(path, []).extend([after] * times)

    def _take_cut(self, path: str) -> int | None:
        with self._lock:
            pending = self._cuts.get(path)
            return pending.pop(0) if pending else None

    def publish(
        self,
        folder: str,
        name: str,
        data: bytes,
        *,
        sums: str = "SHA256SUMS",
        signed: bool = True,
        stranger: bool = False,
        mtime: int = MTIME,
    ) -> FakeImage:
        """Put ``data`` at ``folder/name`` with a checksum file (and its signature) beside."""
        algo = "sha512" if "512" in sums else "sha256"
        others = {f"{name}.manifest": b"package 1.0\n", "unpacked/build-info.txt": b"serial\n"}
        lines = [
            f"{hashlib.new(algo, blob).hexdigest()} *{fname}\n"
            for fname, blob in sorted({**others, name: data}.items())
        ]
        checksums = "".join(lines).encode()
        self.put(f"{folder}/{name}", data, mtime)
        self.put(f"{folder}/{sums}", checksums, mtime)
        if signed:
            assert self.keys is not None, "signing needs GpgKeys"
            self.put(f"{folder}/{sums}.gpg", self.keys.sign(checksums, stranger=stranger), mtime)
        return FakeImage(f"{self.url}{folder}/{name}", f"{folder}/{name}", folder, data)

    def ubuntu(
        self,
        series: str,
        *,
        arch: str = "amd64",
        folder: str = "current",
        size: int = 3 << 20,
        seed: int = 0,
        signed: bool = True,
        stranger: bool = False,
        mtime: int = MTIME,
    ) -> FakeImage:
        """A daily image: ``/<series>/<folder>/<series>-server-cloudimg-<arch>.img``."""
        name = f"{series}-server-cloudimg-{arch}.img"
        return self.publish(
            f"/{series}/{folder}",
            name,
            image_bytes(size, seed),
            signed=signed,
            stranger=stranger,
            mtime=mtime,
        )

    def debian(
        self, codename: str, version: str, *, arch: str = "amd64", size: int = 3 << 20
    ) -> FakeImage:
        """``/<codename>/latest/debian-<version>-genericcloud-<arch>.qcow2`` + SHA512SUMS."""
        name = f"debian-{version}-genericcloud-{arch}.qcow2"
        return self.publish(
            f"/{codename}/latest", name, image_bytes(size, 7), sums="SHA512SUMS", signed=False
        )

    def corrupt(self, image: FakeImage) -> None:
        """Flip one byte of the served image (its checksum file stays as published)."""
        data = bytearray(self.files[image.path].data)
        data[len(data) // 2] ^= 0xFF
        self.files[image.path].data = bytes(data)
