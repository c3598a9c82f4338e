"""Ubuntu's live-server installer (subiquity): its answers, boot command line and ISO.

The answers are autoinstall user-data rendered from
``seeds/autoinstall-user-data.yaml.in`` (layout ``direct`` or ``lvm``, ssh server, no
swap, no account to log in with), read from a cidata seed ISO; the kernel and initrd
are ``casper/`` on the live-server ISO, published with a signed ``SHA256SUMS`` on
releases.ubuntu.com (amd64) and cdimage.ubuntu.com (arm64). ``KIND`` is what the
installer wing needs to run it. Renders text only; downloads and boots nothing.
"""

from __future__ import annotations

import json
import re
import string

from ..errors import ConfigError, SourceError
from ..resources import data_dir
from .seam import InstallerKind, IsoEntry, Release

RELEASES_MIRROR = "https://releases.ubuntu.com"
CDIMAGE_MIRROR = "https://cdimage.ubuntu.com"
TEMPLATE = "autoinstall-user-data.yaml.in"
SERIAL_CONSOLE = {"amd64": "ttyS0,115200n8", "arm64": "ttyAMA0,115200n8"}
#: subiquity keeps the live system in RAM: less than this fails in odd ways.
MIN_MEMORY = 4096  # MiB

_SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(\S+)\s*$")


def live_server_dir_url(release: Release, arch: str, mirror: str | None = None) -> str:
    """Directory holding the live-server ISO and its SHA256SUMS (+ .gpg)."""
    if arch == "amd64":
        return f"{(mirror or RELEASES_MIRROR).rstrip('/')}/{release.codename}"
    return f"{(mirror or CDIMAGE_MIRROR).rstrip('/')}/releases/{release.codename}/release"


def _version_key(name: str) -> tuple[int, ...]:
    m = re.search(r"-(\d+(?:\.\d+)*)-", name)
    return tuple(int(p) for p in m.group(1).split(".")) if m else ()


def find_live_server_iso(sums: str, arch: str) -> IsoEntry:
    """The live-server ISO for ``arch`` listed in a SHA256SUMS text (newest point release)."""
    found: list[IsoEntry] = []
    for line in sums.splitlines():
        m = _SUMS_LINE.match(line.strip())
        if m and "live-server" in m.group(2) and m.group(2).endswith(f"-{arch}.iso"):
            found.append(IsoEntry(name=m.group(2), sha256=m.group(1).lower()))
    if not found:
        raise SourceError(
            f"SHA256SUMS lists no live-server ISO for {arch}",
            hint="check the mirror and series, or pass a local ISO with --iso PATH",
        )
    return max(found, key=lambda e: (_version_key(e.name), e.name))


def storage_layout(layout: str) -> str:
    """subiquity's storage layout name for an imagebuilder --layout."""
    names = {"flat": "direct", "lvm": "lvm"}
    if layout not in names:
        raise ConfigError(f"--layout {layout} is not an installer build")
    return names[layout]


def _yaml(value: str | None) -> str:
    return "null" if value is None else json.dumps(value)


def render_user_data(
    *, layout: str, hostname: str = "imagebuilder", proxy: str | None = None
) -> str:
    """The autoinstall user-data: layout, ssh server, no swap, no account to log in with."""
    template = string.Template((data_dir("seeds") / TEMPLATE).read_text())
    return template.substitute(
        layout=storage_layout(layout), hostname=_yaml(hostname), proxy=_yaml(proxy)
    )


def kernel_cmdline(arch: str) -> str:
    """Unattended: the answers from the cidata seed, the serial console."""
    return " ".join(["autoinstall", "ds=nocloud", f"console={SERIAL_CONSOLE[arch]}"])


KIND = InstallerKind(
    name="subiquity",
    answers=lambda req: render_user_data(layout=req.layout, proxy=req.proxy),
    answer_file="user-data",
    served=False,
    cmdline=lambda url, arch: kernel_cmdline(arch),
    iso_members={
        "amd64": ("casper/vmlinuz", "casper/initrd"),
        "arm64": ("casper/vmlinuz", "casper/initrd"),
    },
    min_memory=MIN_MEMORY,
    fatal=(
        "An error occurred. Press enter to start a shell",  # subiquity crash
        "autoinstall config did not pass validation",
        "Malformed autoinstall",
    ),
    iso_dir_url=live_server_dir_url,
    iso_pick=find_live_server_iso,
    netboot=None,
    components=None,
    pending_question=lambda text: None,
)
