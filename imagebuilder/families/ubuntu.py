"""The Ubuntu family: its releases, cloud images, archive and build policy.

MAAS installs Ubuntu's kernel itself, so cloud images lose theirs (as packer-maas
does) and nothing is pinned unless the build names a kernel; ``base_image`` is the
release itself. Pure knowledge, as every family module.
"""

from __future__ import annotations

import datetime as _dt

from . import apt, apt_bootstrap, ubuntu_installer
from .seam import Family, Release

CLOUD_MIRROR = "https://cloud-images.ubuntu.com"
ARCHIVE = "http://archive.ubuntu.com/ubuntu"
PORTS = "http://ports.ubuntu.com/ubuntu-ports"
#: Fingerprint of the "UEC Image Automatic Signing Key" that signs SHA256SUMS.
CLOUDIMG_KEY = "D2EB44626FDDC30B513D5BB71A5D6C4C7DB87C81"
CLOUDIMG_KEYRING = "/usr/share/keyrings/ubuntu-cloudimage-keyring.gpg"
ARCHIVE_KEYRING = "/usr/share/keyrings/ubuntu-archive-keyring.gpg"
KERNELS = ("linux-generic", "linux-lowlatency", "linux-virtual", "linux-kvm")


def _image_filename(rel: Release, arch: str, released: bool) -> str:
    if released:
        return f"ubuntu-{rel.version}-server-cloudimg-{arch}.img"
    return f"{rel.codename}-server-cloudimg-{arch}.img"


def _image_dir_url(rel: Release, mirror: str | None, serial: str | None, released: bool) -> str:
    """``serial`` pins a build: ``20240507`` (daily) or ``release-20240507`` (released)."""
    base = (mirror or CLOUD_MIRROR).rstrip("/")
    if released:
        return f"{base}/releases/{rel.codename}/{serial or 'release'}"
    return f"{base}/{rel.codename}/{serial or 'current'}"


FAMILY = Family(
    name="ubuntu",
    title="Ubuntu",
    packages=apt.DPKG,
    image_filename=_image_filename,
    image_dir_url=_image_dir_url,
    archive_mirror=lambda arch: ARCHIVE if arch == "amd64" else PORTS,
    archive_keyring=ARCHIVE_KEYRING,
    keyring_package="ubuntu-keyring",
    bootstrap_components=("main", "universe"),
    security_mirror=lambda mirror: mirror,  # the -security pocket is on every mirror
    kernel_package=lambda arch, flavour: f"linux-{flavour or 'generic'}",
    maas_installs_kernel=True,
    maas_base_image=lambda rel: f"ubuntu/{rel.codename}",
    bootloader_id="ubuntu",
    separate_resolved=lambda rel: float(rel.version) >= 23.04,
    installer=ubuntu_installer.KIND,
    extended_support="ESM only",
    lts_in_version=True,
    daily_serials=True,
    bootstrap=apt_bootstrap.tool(locale_gen_takes_name=True),
)


def _release(
    codename: str, version: str, lts: bool, released: str, eol: str, esm: str | None = None
) -> Release:
    return Release(
        FAMILY,
        codename,
        version,
        lts,
        _dt.date.fromisoformat(released),
        _dt.date.fromisoformat(eol),
        extended_eol=_dt.date.fromisoformat(esm) if esm else None,
        kernels=KERNELS,
        default_keyring=CLOUDIMG_KEYRING,
    )


RELEASES: tuple[Release, ...] = (
    _release("focal", "20.04", True, "2020-04-23", "2025-05-31", "2030-04-30"),
    _release("jammy", "22.04", True, "2022-04-21", "2027-06-01", "2032-04-30"),
    _release("noble", "24.04", True, "2024-04-25", "2029-05-31", "2034-04-30"),
    _release("resolute", "26.04", True, "2026-04-23", "2031-05-31", "2036-04-30"),
    _release("stonking", "26.10", False, "2026-10-15", "2027-07-31"),
)
