"""A tiny signed Debian mirror for tests: real .debs, Packages, Release and InRelease.

:func:`publish_netboot` builds a ``debian-installer-<N>-netboot-<arch>`` package with
``dpkg-deb`` holding a kernel and an initrd at the paths Debian's package uses, and
lays out ``dists/<suite>/`` the way apt reads it: ``main/binary-<arch>/Packages``
with the .deb's size and sha256, ``Release`` listing the index's size and sha256,
and ``InRelease`` clear-signed by the test key. apt (the real one) then verifies the
whole chain when :mod:`imagebuilder.netboot` downloads from it.
"""

from __future__ import annotations

import email.utils
import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .cloudimages import MTIME, CloudImages


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
