"""The release catalogue: pure data about the distributions we build.

For each series: distro, version, codename, support dates, architectures, where
its cloud images live (daily ``current/``, released ``release/`` and pinned
serials), the checksum and signature file names, and kernel package names. No
network, no filesystem: ``sources`` turns these patterns into downloads.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

from ..errors import UnknownSeriesError

UBUNTU_CLOUD_MIRROR = "https://cloud-images.ubuntu.com"
UBUNTU_ARCHIVE = "http://archive.ubuntu.com/ubuntu"
UBUNTU_PORTS = "http://ports.ubuntu.com/ubuntu-ports"
DEBIAN_CLOUD_MIRROR = "https://cloud.debian.org/images/cloud"
DEBIAN_ARCHIVE = "http://deb.debian.org/debian"

#: Fingerprint of the "UEC Image Automatic Signing Key" that signs SHA256SUMS.
UBUNTU_CLOUDIMG_KEY = "D2EB44626FDDC30B513D5BB71A5D6C4C7DB87C81"
UBUNTU_CLOUDIMG_KEYRING = "/usr/share/keyrings/ubuntu-cloudimage-keyring.gpg"
DEBIAN_ARCHIVE_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
UBUNTU_ARCHIVE_KEYRING = "/usr/share/keyrings/ubuntu-archive-keyring.gpg"

#: Debian/Ubuntu architecture name -> qemu system emulator suffix.
QEMU_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}


@dataclass(frozen=True)
class Release:
    distro: str  # "ubuntu" | "debian"
    codename: str
    version: str
    lts: bool
    released: _dt.date
    eol: _dt.date  # end of standard support
    extended_eol: _dt.date | None = None  # end of Ubuntu ESM / Debian LTS security support
    arches: tuple[str, ...] = ("amd64", "arm64")
    #: Kernel package names by flavour; the first is the default.
    kernels: tuple[str, ...] = ()
    checksum_file: str = "SHA256SUMS"
    signature_file: str | None = "SHA256SUMS.gpg"
    default_keyring: str | None = UBUNTU_CLOUDIMG_KEYRING
    extra_notes: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return self.codename

    def status(self, today: _dt.date | None = None) -> str:
        today = today or _dt.date.today()
        if today < self.released:
            return "development"
        if today > self.eol:
            if self.extended_eol and today <= self.extended_eol:
                return "ESM only" if self.distro == "ubuntu" else "Debian LTS (security only)"
            return "end of life"
        return "supported (LTS)" if self.lts and self.distro == "ubuntu" else "supported"

    def kernel_package(self, arch: str, flavour: str | None = None) -> str:
        """The kernel package MAAS/curtin should install for this release."""
        if self.distro == "debian":
            return f"linux-image-{flavour + '-' if flavour else ''}{arch}"
        return f"linux-{flavour or 'generic'}"

    # ---- cloud image locations -------------------------------------------------
    def image_filename(self, arch: str, *, released: bool = False) -> str:
        if self.distro == "debian":
            return f"debian-{self.version}-genericcloud-{arch}.qcow2"
        if released:
            return f"ubuntu-{self.version}-server-cloudimg-{arch}.img"
        return f"{self.codename}-server-cloudimg-{arch}.img"

    def image_dir_url(
        self, mirror: str | None = None, *, serial: str | None = None, released: bool = False
    ) -> str:
        """Directory holding the image and its checksum/signature files.

        ``serial`` pins a build: ``20240507`` (daily), ``release-20240507``
        (released), or Debian's ``20240507-1740``.
        """
        if self.distro == "debian":
            base = (mirror or DEBIAN_CLOUD_MIRROR).rstrip("/")
            return f"{base}/{self.codename}/{serial or 'latest'}"
        base = (mirror or UBUNTU_CLOUD_MIRROR).rstrip("/")
        if released:
            return f"{base}/releases/{self.codename}/{serial or 'release'}"
        return f"{base}/{self.codename}/{serial or 'current'}"

    def archive_mirror(self, arch: str) -> str:
        """Default apt mirror for bootstrapping this release."""
        if self.distro == "debian":
            return DEBIAN_ARCHIVE
        return UBUNTU_ARCHIVE if arch == "amd64" else UBUNTU_PORTS

    def archive_keyring(self) -> str:
        return DEBIAN_ARCHIVE_KEYRING if self.distro == "debian" else UBUNTU_ARCHIVE_KEYRING

    def bootstrap_components(self) -> tuple[str, ...]:
        return ("main",) if self.distro == "debian" else ("main", "universe")


def _d(s: str) -> _dt.date:
    return _dt.date.fromisoformat(s)


_UBUNTU_KERNELS = ("linux-generic", "linux-lowlatency", "linux-virtual", "linux-kvm")


def _ubuntu(
    codename: str, version: str, lts: bool, released: str, eol: str, esm: str | None = None
) -> Release:
    return Release(
        "ubuntu",
        codename,
        version,
        lts,
        _d(released),
        _d(eol),
        extended_eol=_d(esm) if esm else None,
        kernels=_UBUNTU_KERNELS,
    )


def _debian(codename: str, version: str, released: str, eol: str, lts_eol: str) -> Release:
    return Release(
        "debian",
        codename,
        version,
        True,
        _d(released),
        _d(eol),
        extended_eol=_d(lts_eol),
        kernels=("linux-image-{arch}", "linux-image-cloud-{arch}", "linux-image-rt-{arch}"),
        checksum_file="SHA512SUMS",
        signature_file=None,
        default_keyring=None,
    )


RELEASES: tuple[Release, ...] = (
    _ubuntu("focal", "20.04", True, "2020-04-23", "2025-05-31", "2030-04-30"),
    _ubuntu("jammy", "22.04", True, "2022-04-21", "2027-06-01", "2032-04-30"),
    _ubuntu("noble", "24.04", True, "2024-04-25", "2029-05-31", "2034-04-30"),
    _ubuntu("resolute", "26.04", True, "2026-04-23", "2031-05-31", "2036-04-30"),
    _ubuntu("stonking", "26.10", False, "2026-10-15", "2027-07-31"),
    _debian("bullseye", "11", "2021-08-14", "2024-08-14", "2026-08-31"),
    _debian("bookworm", "12", "2023-06-10", "2026-06-10", "2028-06-30"),
    _debian("trixie", "13", "2025-08-09", "2028-08-09", "2030-06-30"),
)

_BY_NAME = {r.codename: r for r in RELEASES} | {r.version: r for r in RELEASES}


def get(series: str) -> Release:
    """Look a series up by codename or version, or raise UnknownSeriesError."""
    try:
        return _BY_NAME[series.lower()]
    except KeyError:
        known = ", ".join(r.codename for r in RELEASES)
        raise UnknownSeriesError(
            f"unknown series {series!r}; known series: {known}",
            hint="run 'imagebuilder releases' for versions and architectures",
        ) from None


def names() -> list[str]:
    return [r.codename for r in RELEASES]
