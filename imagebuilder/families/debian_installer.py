"""The Debian installer (debian-installer): its answers, boot command line and media.

The answers are a preseed file rendered from ``seeds/preseed.cfg.in``.

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
console. ``KIND`` is what the installer wing needs to run it. This module renders text
only; it serves, downloads and boots nothing.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from urllib.parse import urlsplit

from ..errors import ConfigError
from ..resources import data_dir
from . import apt
from .seam import TERMINAL_CODES, AnswerRequest, Components, InstallerKind, NetbootPackage

__all__ = [
    "KIND",
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
    "uefi": "538 538 538 free $iflabel{ gpt } $reusemethod{ } method{ efi } format{ } .",
    "bios": "1 1 1 free $iflabel{ gpt } $reusemethod{ } method{ biosgrub } .",
}
_ROOT = (
    "2048 10000 -1 ext4 {where} method{{ format }} format{{ }} use_filesystem{{ }} "
    "filesystem{{ ext4 }} mountpoint{{ / }} ."
)
_SEPARATE_BOOT = (
    "1024 1024 1024 ext4 $primary{ } method{ format } format{ } use_filesystem{ } "
    "filesystem{ ext4 } mountpoint{ /boot } ."
)


def partitioning(layout: str, firmware: str, arch: str = "amd64") -> str:
    """The partman answers for ``layout`` (flat or lvm) booting with ``firmware``."""
    boot = _BOOT["uefi" if arch == "arm64" else firmware]
    if layout == "flat":
        method, recipe = "regular", [boot, _ROOT.format(where="$primary{ }")]
    elif layout == "lvm":
        method = "lvm"
        recipe = [boot, _SEPARATE_BOOT, _ROOT.format(where="$lvmok{ } lv_name{ root }")]
    else:
        raise ConfigError(f"--layout {layout} is not an installer build")
    lines = [
        f"d-i partman-auto/disk string {DISK}",
        f"d-i partman-auto/method string {method}",
        "d-i partman-partitioning/choose_label select gpt",
        "d-i partman-partitioning/default_label string gpt",
        "d-i partman-auto/choose_recipe select imagebuilder",
        "d-i partman-auto/expert_recipe string imagebuilder :: " + " ".join(recipe),
        "d-i partman-efi/non_efi_system boolean true",
    ]
    if layout == "lvm":
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
    layout: str,
    firmware: str,
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
    template = string.Template((data_dir("seeds") / TEMPLATE).read_text())
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


#: debian-installer's text frontend waiting for an answer nobody will type.
_PROMPT = "Prompt: '?' for help"
_UNDERLINE = re.compile(r"^-{4,}$")


def pending_question(text: str) -> str | None:
    """The title of the question an installer's text frontend waits on at the end of
    ``text`` (serial console output), or None when it is not waiting."""
    lines = [TERMINAL_CODES.sub("", ln).strip() for ln in text.replace("\r", "\n").splitlines()]
    lines = [ln for ln in lines if ln]
    last = max((i for i, ln in enumerate(lines) if ln.startswith(_PROMPT)), default=None)
    if last is None:
        return None
    titles = [i for i in range(last) if _UNDERLINE.match(lines[i]) and i > 0]
    title = lines[titles[-1] - 1] if titles else "an unanswered question"
    asks = [ln for ln in lines[titles[-1] if titles else 0 : last] if ln.endswith(":")]
    return f"{title}: {asks[-1].rstrip(':')}" if asks else title


# ---- the netboot installer, a package of the archive ------------------------------------

#: Debian release number of each codename with a netboot installer package.
RELEASE_NUMBERS = {"bullseye": "11", "bookworm": "12", "trixie": "13"}
#: Kernel file name inside the netboot tree, per architecture.
KERNEL_NAME = {"amd64": "linux", "arm64": "linux"}


def netboot_package(series: str, arch: str) -> str:
    """``debian-installer-12-netboot-amd64`` for bookworm amd64."""
    number = RELEASE_NUMBERS.get(series)
    if number is None:
        raise ConfigError(
            f"no Debian netboot installer is known for {series}",
            hint=f"use one of {', '.join(RELEASE_NUMBERS)}, or pass a netinst ISO with --iso",
        )
    return f"debian-installer-{number}-netboot-{arch}"


def member_paths(series: str, arch: str) -> tuple[str, str]:
    """Kernel and initrd inside the package's data tarball (text-mode installer)."""
    number = RELEASE_NUMBERS[series]
    tree = f"./usr/lib/debian-installer/images/{number}/{arch}/text/debian-installer/{arch}"
    return f"{tree}/{KERNEL_NAME[arch]}", f"{tree}/initrd.gz"


# ---- what it downloads while installing: udebs ------------------------------------------

#: The netboot initrd holds only the start of the installer; every udeb of these
#: priorities it lacks (partman, grub-installer, apt-setup, finish-install, kernel
#: modules...) is downloaded from the mirror's ``main/debian-installer`` section.
_PRIORITIES = ("required", "important", "standard")


def udeb_index_url(mirror: str, suite: str, arch: str) -> str:
    return f"{mirror}/dists/{suite}/main/debian-installer/binary-{arch}/Packages.xz"


def initrd_packages(members: Iterable[tuple[str, bytes]]) -> tuple[set[str], str | None]:
    """Packages the installer initrd already has, and its kernel ABI (``6.1.0-50-amd64``)."""
    have: set[str] = set()
    abi = None
    for name, content in members:
        name = name.removeprefix("./")
        if name == "var/lib/dpkg/status":
            have |= set(re.findall(r"^Package: (\S+)", content.decode("utf-8", "replace"), re.M))
        elif abi is None and (m := re.match(r"lib/modules/([^/]+)/?$", name)):
            abi = m.group(1)
    return have, abi


def needed_udebs(index: str, have: set[str], abi: str | None) -> dict[str, str]:
    """Udebs (name -> Filename) the installer will download: priority standard or higher,
    not in the initrd, kernel modules only for the initrd's kernel."""
    out: dict[str, str] = {}
    for st in apt.paragraphs(index):
        if "Package" not in st:
            continue
        name = st["Package"]
        if name in have or st.get("Priority") not in _PRIORITIES or "Filename" not in st:
            continue
        if name.endswith("-di") and (abi is None or f"-{abi}-di" not in name):
            continue
        out[name] = st["Filename"]
    return out


def _needed(index: str, initrd: Iterable[tuple[str, bytes]]) -> dict[str, str]:
    have, abi = initrd_packages(initrd)
    return needed_udebs(index, have, abi)


def _answers(req: AnswerRequest) -> str:
    return render_preseed(
        suite=req.suite,
        mirror=req.mirror,
        layout=req.layout,
        firmware=req.firmware,
        kernel=req.kernel,
        arch=req.arch,
        proxy=req.proxy,
    )


KIND = InstallerKind(
    name="debian-installer",
    answers=_answers,
    answer_file="preseed.cfg",
    served=True,
    cmdline=lambda url, arch: kernel_cmdline(url or "", arch),
    iso_members={
        "amd64": ("install.amd/vmlinuz", "install.amd/initrd.gz"),
        "arm64": ("install.a64/vmlinuz", "install.a64/initrd.gz"),
    },
    min_memory=0,
    fatal=("Installation step failed", "Unable to install GRUB"),
    iso_dir_url=None,
    iso_pick=None,
    netboot=NetbootPackage(package=netboot_package, members=member_paths),
    components=Components(index_url=udeb_index_url, needed=_needed),
    pending_question=pending_question,
)
