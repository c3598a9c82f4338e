"""The Debian installer's answers: a preseed file rendered from ``seeds/preseed.cfg.in``.

:func:`render_preseed` fills the template with the mirror, the suite, the kernel, the
packages the installed system needs for provisioning (cloud-init, openssh-server,
sudo, netplan.io) and a partitioning recipe per layout and firmware:

- ``flat``: one ext4 root (plus the ESP under UEFI, a BIOS boot partition under
  SeaBIOS), GPT, no swap; the export takes the root partition as a tar;
- ``lvm``: the same boot partitions, a separate ext4 ``/boot`` and the root as the
  logical volume ``root`` in the volume group ``imagebuilder-vg``, no swap; the
  export takes the whole disk.

No password is set (root's is locked) and no user is made: the build user comes
from the NoCloud seed at first boot. :func:`kernel_cmdline` is what the installer
boots with: unattended, the preseed URL on the loopback HTTP server, the serial
console. This module renders text only; it serves and boots nothing.
"""

from __future__ import annotations

import string
from urllib.parse import urlsplit

from ..config.choices import Firmware, Layout
from ..errors import ConfigError
from ..vm.seed import SEEDS_DIR

__all__ = [
    "PACKAGES",
    "VOLUME_GROUP",
    "kernel_cmdline",
    "partitioning",
    "render_preseed",
]

TEMPLATE = "preseed.cfg.in"
#: What provisioning needs in the installed system (the rest is Debian's standard base).
PACKAGES = ("cloud-init", "openssh-server", "sudo", "netplan.io")
VOLUME_GROUP = "imagebuilder-vg"
#: The installed disk: the first virtio disk of the installer VM.
DISK = "/dev/vda"
SERIAL = {"amd64": "ttyS0,115200n8", "arm64": "ttyAMA0,115200n8"}

_BOOT = {
    Firmware.UEFI: "538 538 538 free $iflabel{ gpt } $reusemethod{ } method{ efi } format{ } .",
    Firmware.BIOS: "1 1 1 free $iflabel{ gpt } $reusemethod{ } method{ biosgrub } .",
}
_ROOT = (
    "2048 10000 -1 ext4 {where} method{{ format }} format{{ }} use_filesystem{{ }} "
    "filesystem{{ ext4 }} mountpoint{{ / }} ."
)
_SEPARATE_BOOT = (
    "1024 1024 1024 ext4 $primary{ } method{ format } format{ } use_filesystem{ } "
    "filesystem{ ext4 } mountpoint{ /boot } ."
)


def partitioning(layout: Layout, firmware: Firmware, arch: str = "amd64") -> str:
    """The partman answers for ``layout`` (flat or lvm) booting with ``firmware``."""
    boot = _BOOT[Firmware.UEFI if arch == "arm64" else firmware]
    if layout is Layout.FLAT:
        method, recipe = "regular", [boot, _ROOT.format(where="$primary{ }")]
    elif layout is Layout.LVM:
        method = "lvm"
        recipe = [boot, _SEPARATE_BOOT, _ROOT.format(where="$lvmok{ } lv_name{ root }")]
    else:
        raise ConfigError(f"--layout {layout.value} is not an installer build")
    lines = [
        f"d-i partman-auto/disk string {DISK}",
        f"d-i partman-auto/method string {method}",
        "d-i partman-partitioning/choose_label select gpt",
        "d-i partman-partitioning/default_label string gpt",
        "d-i partman-auto/choose_recipe select imagebuilder",
        "d-i partman-auto/expert_recipe string imagebuilder :: " + " ".join(recipe),
        "d-i partman-efi/non_efi_system boolean true",
    ]
    if layout is Layout.LVM:
        lines += [
            f"d-i partman-auto-lvm/new_vg_name string {VOLUME_GROUP}",
            "d-i partman-auto-lvm/guided_size string max",
            "d-i partman-lvm/device_remove_lvm boolean true",
            "d-i partman-lvm/confirm boolean true",
            "d-i partman-lvm/confirm_nooverwrite boolean true",
            "d-i partman-md/device_remove_md boolean true",
        ]
    return "\n".join(lines)


def render_preseed(
    *,
    suite: str,
    mirror: str,
    layout: Layout,
    firmware: Firmware,
    kernel: str,
    arch: str = "amd64",
    proxy: str | None = None,
    hostname: str = "imagebuilder",
    extra_packages: tuple[str, ...] = (),
) -> str:
    """The preseed file for one installation."""
    url = urlsplit(mirror)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(
            f"the Debian installer needs an http(s) mirror, not {mirror!r}",
            hint="pass --mirror http://HOST/debian",
        )
    host = url.hostname + (f":{url.port}" if url.port else "")
    template = string.Template((SEEDS_DIR / TEMPLATE).read_text())
    return template.substitute(
        hostname=hostname,
        mirror_protocol=url.scheme,
        mirror_host=host,
        mirror_directory=url.path.rstrip("/") or "/",
        proxy=proxy or "",
        suite=suite,
        partitioning=partitioning(layout, firmware, arch),
        kernel=kernel,
        packages=" ".join([*PACKAGES, *extra_packages]),
        boot_device=DISK,
    )


def kernel_cmdline(preseed_url: str, arch: str, hostname: str = "imagebuilder") -> str:
    """Unattended Debian installer: preseed from ``preseed_url``, no IPv6 wait, serial console."""
    return " ".join(
        [
            "auto=true",
            "priority=critical",
            f"url={preseed_url}",
            f"netcfg/get_hostname={hostname}",
            "netcfg/get_domain=",
            "ipv6.disable=1",
            "DEBIAN_FRONTEND=text",
            f"console={SERIAL[arch]}",
        ]
    )
