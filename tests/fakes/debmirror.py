"""A tiny signed Debian mirror for tests: real .debs, Packages, Release and InRelease.

:func:`publish_netboot` builds a ``debian-installer-<N>-netboot-<arch>`` package with
``dpkg-deb`` holding a kernel and an initrd at the paths Debian's package uses, and
lays out ``dists/<suite>/`` the way apt reads it: ``main/binary-<arch>/Packages``
with the .deb's size and sha256, ``Release`` listing the index's size and sha256,
and ``InRelease`` clear-signed by the test key. apt (the real one) then verifies the
whole chain when :mod:`imagebuilder.installer.netboot` downloads from it.

:func:`faults` makes the server misbehave the way real mirrors sometimes do, for
the first N requests of a path: close the connection without answering, reset it
(RST), or answer 503. The server itself (:class:`~tests.fakes.cloudimages.CloudImages`)
is a threading server with daemon threads and a listen backlog of 64, so it never
refuses the parallel requests of the udeb preflight unless told to.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import socket
import struct
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from .cloudimages import MTIME, CloudImages, Hit, _Handler, _Server

Fault = Literal["refuse", "reset", "busy"]


class Faults:
    """What the server does instead of answering the next requests of a path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, list[Fault]] = {}

    def add(self, path: str, fault: Fault, times: int = 1) -> None:
        """The next ``times`` requests (HEAD or GET) for ``path`` meet ``fault``:
        ``refuse`` closes the connection without a word, ``reset`` aborts it with a
        TCP RST, ``busy`` answers ``503 Service Unavailable``."""
        with self._lock:
            self._pending.setdefault(path, []).extend([fault] * times)

    def take(self, path: str) -> Fault | None:
        with self._lock:
            pending = self._pending.get(path)
            return pending.pop(0) if pending else None


class _FaultyServer(_Server):
    faults: Faults


class _FaultyHandler(_Handler):
    server: _FaultyServer

    def _serve(self, *, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        fault = self.server.faults.take(path)
        if fault is None:
            super()._serve(head=head)
            return
        agent = self.headers.get("User-Agent", "")
        status = 503 if fault == "busy" else 0  # 0: no answer at all
        self.server.fake._record(
            Hit(self.command, path, self.headers.get("Range"), status, 0, agent)
        )
        if fault == "busy":
            self._small(503, b"try again later\n")
            return
        self.close_connection = True
        if fault == "reset":  # linger 0: close() sends RST instead of FIN
            linger = struct.pack("ii", 1, 0)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        else:
            self.connection.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.rfile.close()  # the makefile() reference would keep the socket open
            self.connection.close()

    def _small(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        """As the base handler, but no body after a HEAD: the client would read the stray
        bytes as the next answer on the kept-alive connection, a dropped connection."""
        if self.command != "HEAD":
            super()._small(status, body, headers)
            return
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()


def faults(srv: CloudImages) -> Faults:
    """The fault table of ``srv``, installed on first use (then used by every request)."""
    httpd = srv._httpd
    if not isinstance(getattr(httpd, "faults", None), Faults):
        httpd.faults = Faults()  # type: ignore[attr-defined]
        httpd.RequestHandlerClass = _FaultyHandler
    return httpd.faults  # type: ignore[attr-defined,no-any-return]


@dataclass(frozen=True)
class NetbootPackage:
    name: str
    version: str
    kernel: bytes
    initrd: bytes
    deb: bytes


def build_deb(work: Path, name: str, version: str, files: dict[str, bytes]) -> bytes:
    """A real .deb (dpkg-deb --build) holding ``files`` (paths relative to /)."""
    root = work / f"{name}-pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: Test <test@example.invalid>\nDescription: test package\n"
    )
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    out = work / f"{name}_{version}_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)],
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


def _stanza(name: str, version: str, filename: str, deb: bytes) -> str:
    return (
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: Test <test@example.invalid>\nPriority: optional\nSection: devel\n"
        f"Filename: {filename}\nSize: {len(deb)}\n"
        f"SHA256: {hashlib.sha256(deb).hexdigest()}\nDescription: test package\n"
    )


def publish_netboot(
    srv: CloudImages,
    work: Path,
    *,
    number: str = "12",
    suite: str = "bookworm",
    arch: str = "amd64",
    version: str = "20230607+deb12u99",
    stranger: bool = False,
    tamper_deb: bool = False,
) -> NetbootPackage:
    """Serve a signed ``suite`` under ``/debian`` holding only the netboot package."""
    name = f"debian-installer-{number}-netboot-{arch}"
    tree = f"usr/lib/debian-installer/images/{number}/{arch}/text/debian-installer/{arch}"
    kernel, initrd = b"MZ fake kernel " * 1000, b"\x1f\x8b fake initrd " * 3000
    deb = build_deb(work, name, version, {f"{tree}/linux": kernel, f"{tree}/initrd.gz": initrd})
    filename = f"pool/main/d/{name}/{name}_{version}_all.deb"
    packages = _stanza(name, version, filename, deb).encode()
    index = f"main/binary-{arch}/Packages"
    release = (
        f"Origin: Debian\nLabel: Debian\nSuite: stable\nCodename: {suite}\n"
        f"Date: {email.utils.formatdate(MTIME, usegmt=True)}\n"
        f"Architectures: {arch}\nComponents: main\nDescription: test mirror\nSHA256:\n"
        f" {hashlib.sha256(packages).hexdigest()} {len(packages)} {index}\n"
    ).encode()
    assert srv.keys is not None
    srv.put(f"/debian/dists/{suite}/{index}", packages)
    srv.put(f"/debian/dists/{suite}/Release", release)
    srv.put(f"/debian/dists/{suite}/InRelease", srv.keys.clearsign(release, stranger=stranger))
    served = deb[:-1] + bytes([deb[-1] ^ 1]) if tamper_deb else deb
    srv.put(f"/debian/{filename}", served)
    return NetbootPackage(name, version, kernel, initrd, deb)
