"""The Debian family: its releases, cloud images, archive and build policy.

Debian's cloud images keep their kernel (MAAS has no Debian kernels to install), so
``/curtin/CUSTOM_KERNEL`` names the image's own; MAAS has no Debian OS, so uploads
take an Ubuntu LTS as ``base_image``. Pure knowledge, as every family module.
"""

from __future__ import annotations

import datetime as _dt

from . import apt, apt_bootstrap, debian_installer
from .seam import Family, Release

CLOUD_MIRROR = "https://cloud.debian.org/images/cloud"
ARCHIVE = "http://deb.debian.org/debian"
ARCHIVE_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
#: What MAAS deploys Debian images as (it names no Debian OS): an Ubuntu LTS.
MAAS_BASE_IMAGE = "ubuntu/jammy"


def _image_filename(rel: Release, arch: str, released: bool) -> str:
    return f"debian-{rel.version}-genericcloud-{arch}.qcow2"


def _image_dir_url(rel: Release, mirror: str | None, serial: str | None, released: bool) -> str:
    """``serial`` is Debian's build id, e.g. ``20240507-1740``; else ``latest``."""
    return f"{(mirror or CLOUD_MIRROR).rstrip('/')}/{rel.codename}/{serial or 'latest'}"


def _security_mirror(mirror: str) -> str | None:
    """deb.debian.org/debian -> deb.debian.org/debian-security; unknown for other layouts."""
    if mirror.endswith("/debian"):
        return mirror.removesuffix("/debian") + "/debian-security"
    return None


def _kernel_package(arch: str, flavour: str | None) -> str:
    return f"linux-image-{flavour + '-' if flavour else ''}{arch}"


FAMILY = Family(
    name="debian",
    title="Debian",
    packages=apt.DPKG,
    image_filename=_image_filename,
    image_dir_url=_image_dir_url,
    archive_mirror=lambda arch: ARCHIVE,
    archive_keyring=ARCHIVE_KEYRING,
    keyring_package="debian-archive-keyring",
    bootstrap_components=("main",),
    security_mirror=_security_mirror,
    kernel_package=_kernel_package,
    maas_installs_kernel=False,
    maas_base_image=lambda rel: MAAS_BASE_IMAGE,
    bootloader_id="debian",
    separate_resolved=lambda rel: float(rel.version) >= 12,
    installer=debian_installer.KIND,
    extended_support="Debian LTS (security only)",
    lts_in_version=False,
    daily_serials=False,
    bootstrap=apt_bootstrap.tool(locale_gen_takes_name=False),
)


def _release(codename: str, version: str, released: str, eol: str, lts_eol: str) -> Release:
    return Release(
        FAMILY,
        codename,
        version,
        True,
        _dt.date.fromisoformat(released),
        _dt.date.fromisoformat(eol),
        extended_eol=_dt.date.fromisoformat(lts_eol),
        kernels=("linux-image-{arch}", "linux-image-cloud-{arch}", "linux-image-rt-{arch}"),
        checksum_file="SHA512SUMS",
        signature_file=None,
        default_keyring=None,
    )


RELEASES: tuple[Release, ...] = (
    _release("bullseye", "11", "2021-08-14", "2024-08-14", "2026-08-31"),
    _release("bookworm", "12", "2023-06-10", "2026-06-10", "2028-06-30"),
    _release("trixie", "13", "2025-08-09", "2028-08-09", "2030-06-30"),
)
