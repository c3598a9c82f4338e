"""What the two dpkg families (Debian, Ubuntu) share: apt and dpkg inside the guest.

The package manager's commands as shell text, the dpkg status database and how to
read it for the manifest, the proxy file apt reads, and what curtin's hooks install
on a dpkg system when a package is missing (``install_missing_packages``). Pure
knowledge: nothing here runs a program or opens a disk.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from . import aptresolve
from .seam import Packages, PackageSystem

DPKG_STATUS = "var/lib/dpkg/status"
#: The guest scripts of ``seeds/`` for dpkg systems (apt, dpkg, debconf, grub packages).
BOOTLOADERS_SCRIPT = "bootloaders.sh"
HYGIENE_SCRIPT = "hygiene.sh"
PROXY_FILE = "/etc/apt/apt.conf.d/90imagebuilder-proxy"

#: arch -> firmware -> what curtin's hooks install when missing (install_missing_packages;
#: -signed and shim as MAAS's Ubuntu ephemeral has them); first the grub meta package.
CURTIN_INSTALLS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "amd64": {"BIOS": ("grub-pc", "grub-pc-bin"),
              "UEFI": ("grub-efi-amd64", "grub-efi-amd64-bin", "grub-efi-amd64-signed",
                       "shim-signed", "efibootmgr")},
    "arm64": {"UEFI": ("grub-efi-arm64", "grub-efi-arm64-bin", "grub-efi-arm64-signed",
                       "shim-signed", "efibootmgr")},
}  # fmt: skip


def paragraphs(text: str) -> Iterator[dict[str, str]]:
    """The ``Field: value`` paragraphs of a dpkg status file or Packages index
    (continuation lines are skipped: nothing here reads a multi-line field)."""
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if fields:
            yield fields


def parse_dpkg_status(data: bytes) -> Packages:
    """Installed packages (name, version, architecture) of a dpkg status file, sorted."""
    pkgs = []
    for fields in paragraphs(data.decode("utf-8", "replace")):
        if fields.get("Package") and fields.get("Status", "").split()[-1:] == ["installed"]:
            pkgs.append(
                {
                    "name": fields["Package"],
                    "version": fields.get("Version", ""),
                    "architecture": fields.get("Architecture", ""),
                }
            )
    return sorted(pkgs, key=lambda p: (p["name"], p["architecture"]))


def archive_source(mirror: str, suite: str, components: tuple[str, ...]) -> str:
    """The sources.list line of one suite of an archive."""
    return f"deb {mirror} {suite} {' '.join(components)}"


def proxy_conf(env: Mapping[str, str]) -> str:
    """apt's proxy settings for the build (``http_proxy``/``https_proxy`` of ``env``)."""
    lines = [
        f'Acquire::{k[:-6]}::Proxy "{env[k]}";' for k in ("http_proxy", "https_proxy") if k in env
    ]
    return "// imagebuilder: for the build only, removed before export\n" + "\n".join(lines) + "\n"


#: The dpkg families' package system: apt and dpkg in the guest and on the host.
DPKG = PackageSystem(
    name="apt",
    env={"DEBIAN_FRONTEND": "noninteractive"},
    refresh="apt-get -o Acquire::Retries=3 update",
    install=lambda quoted: f"apt-get -y install {quoted}",
    remove_kernels=(
        "pkgs=$(dpkg-query -W -f '${db:Status-Abbrev} ${Package}\\n' 'linux-image-*' "
        "linux-virtual 2>/dev/null | awk '$1 ~ /^[ih]i/ {print $2}'); "
        '{ [ -z "$pkgs" ] || apt-get -y purge $pkgs; } && apt-get -y autoremove --purge'
    ),
    database=DPKG_STATUS,
    parse_database=parse_dpkg_status,
    native="dpkg",
    proxy_file=PROXY_FILE,
    proxy_conf=proxy_conf,
    bootloaders_script=BOOTLOADERS_SCRIPT,
    hygiene_script=HYGIENE_SCRIPT,
    curtin_installs=CURTIN_INSTALLS,
    archive_source=archive_source,
    fetch_package=aptresolve.fetch_package,
    package_payload=aptresolve.package_payload,
    resolve_versions=aptresolve.resolve_versions,
)
