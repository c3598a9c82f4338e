"""The option table: every configurable value described once.

Each :class:`Option` says where a value lives in the config tree, how to parse
it from a string (command line, environment) or TOML value, and how to explain
it. ``cli`` builds argparse from :data:`OPTIONS`; ``config.resolve`` uses it to
merge and validate layers. No I/O here.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .choices import Accel, BaseKind, Compression, DiskBackend, FileType, Firmware, Layout


@dataclass(frozen=True)
class Option:
    """One configurable value: where it lives, how to parse it, how to explain it."""

    name: str  # CLI --name (dashes), env IMAGEBUILDER_NAME, TOML key (underscores)
    section: str  # "" for top level, else source|machine|provision|output
    parse: Callable[[Any], Any]
    help: str
    choices: tuple[str, ...] = ()
    flag: bool = False  # a boolean switch on the command line
    metavar: str | None = None

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return "IMAGEBUILDER_" + self.key.upper()


_SIZE_RE = re.compile(r"^\d+(\.\d+)?[KMGT]?$", re.I)


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {v!r}")


def _opt_str(v: Any) -> str | None:
    return None if v in (None, "") else str(v)


def _opt_path(v: Any) -> Path | None:
    return None if v in (None, "") else Path(str(v)).expanduser()


def _pos_int(v: Any) -> int:
    n = int(v)
    if n <= 0:
        raise ValueError(f"must be a positive number, got {v!r}")
    return n


def _opt_float(v: Any) -> float | None:
    if v in (None, ""):
        return None
    f = float(v)
    if f <= 0:
        raise ValueError(f"must be positive, got {v!r}")
    return f


def _opt_int(v: Any) -> int | None:
    return None if v in (None, "") else int(v)


def _size(v: Any) -> str:
    s = str(v).strip()
    if not _SIZE_RE.match(s):
        raise ValueError(f"expected a size like 8G or 20480M, got {v!r}")
    return s.upper()


def _sha256(v: Any) -> str | None:
    if v in (None, ""):
        return None
    s = str(v).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", s):
        raise ValueError("expected 64 hex digits")
    return s


def _packages(v: Any) -> tuple[str, ...]:
    items = [str(x) for x in v] if isinstance(v, (list, tuple)) else re.split(r"[,\s]+", str(v))
    return tuple(x for x in items if x)


def _enum(cls: type[enum.Enum]) -> Callable[[Any], Any]:
    def parse(v: Any) -> Any:
        return cls(str(v).lower())

    return parse


def _choices(cls: type[enum.Enum]) -> tuple[str, ...]:
    return tuple(str(m.value) for m in cls)


OPTIONS: tuple[Option, ...] = (
    Option("arch", "", str, "target architecture", ("amd64", "arm64")),
    Option(
        "layout",
        "",
        _enum(Layout),
        "image layout: cloud image root tar, or an installer build (flat tar / LVM dd)",
        _choices(Layout),
    ),
    Option(
        "base",
        "source",
        _enum(BaseKind),
        "where the base disk comes from: the distribution's cloud image, "
        "or built from an apt mirror with mmdebstrap (no VM)",
        _choices(BaseKind),
    ),
    Option(
        "base-image",
        "source",
        _opt_str,
        "use this local file or URL as the base image instead of the catalogue's",
        metavar="PATH|URL",
    ),
    Option(
        "base-sha256",
        "source",
        _sha256,
        "expected sha256 of --base-image (required for URLs without a SHA256SUMS beside them)",
        metavar="HEX",
    ),
    Option(
        "serial",
        "source",
        _opt_str,
        "pin a cloud image build, e.g. 20240507 or release-20240507",
        metavar="SERIAL",
    ),
    Option(
        "released",
        "source",
        _bool,
        "use the released/ image tree instead of the daily current/",
        flag=True,
    ),
    Option(
        "mirror",
        "source",
        _opt_str,
        "replace the cloud-images host, or (with --base bootstrap) the apt mirror",
        metavar="URL",
    ),
    Option(
        "keyring",
        "source",
        _opt_path,
        "GPG keyring that signs SHA256SUMS (default: the distribution's, where installed)",
        metavar="FILE",
    ),
    Option(
        "require-signature",
        "source",
        _bool,
        "fail instead of warning when SHA256SUMS cannot be signature-checked",
        flag=True,
    ),
    Option("offline", "source", _bool, "use only the cache; never touch the network", flag=True),
    Option(
        "refresh",
        "source",
        _bool,
        "re-read the published checksums of a daily (current/) image instead of reusing the cache",
        flag=True,
    ),
    Option(
        "cache-dir",
        "source",
        lambda v: Path(str(v)).expanduser(),
        "where downloads and base disks are cached",
        metavar="DIR",
    ),
    Option(
        "extra-packages",
        "source",
        _packages,
        "extra packages for --base bootstrap (comma separated)",
        metavar="PKG,...",
    ),
    Option(
        "iso",
        "source",
        _opt_path,
        "installer builds: use this local installer ISO (Ubuntu live-server or Debian netinst) "
        "instead of downloading one",
        metavar="PATH",
    ),
    Option(
        "packages",
        "output",
        _opt_path,
        "installer builds: ship these *.deb files in /curtin, installed when MAAS deploys",
        metavar="DIR",
    ),
    Option(
        "firmware",
        "machine",
        _enum(Firmware),
        "build VM firmware: OVMF (UEFI) or SeaBIOS",
        _choices(Firmware),
    ),
    Option(
        "accel",
        "machine",
        _enum(Accel),
        "accelerator; auto tests that KVM really runs a guest and falls back to TCG",
        _choices(Accel),
    ),
    Option("memory", "machine", _pos_int, "build VM memory in MiB", metavar="MIB"),
    Option("cpus", "machine", _pos_int, "build VM vCPUs", metavar="N"),
    Option("disk-size", "machine", _size, "size of the build disk", metavar="SIZE"),
    Option(
        "timeout",
        "machine",
        _opt_float,
        "seconds to wait for the guest (default scales with the accelerator)",
        metavar="SECONDS",
    ),
    Option(
        "vnc",
        "machine",
        _bool,
        "show the VM's screen on a VNC display bound to 127.0.0.1",
        flag=True,
    ),
    Option("console", "machine", _bool, "copy the VM's serial console to the terminal", flag=True),
    Option(
        "customize",
        "provision",
        _opt_path,
        "script (any executable) run as root inside the VM",
        metavar="SCRIPT",
    ),
    Option(
        "http-dir",
        "provision",
        _opt_path,
        "directory served to the guest; its URL is in $IMAGEBUILDER_HTTP",
        metavar="DIR",
    ),
    Option(
        "kernel",
        "provision",
        _opt_str,
        "install this kernel package in the image and pin it for curtin (/curtin/CUSTOM_KERNEL)",
        metavar="PKG",
    ),
    Option(
        "http-proxy",
        "provision",
        _opt_str,
        "proxy for the guest during the build only (default: $http_proxy)",
        metavar="URL",
    ),
    Option(
        "https-proxy",
        "provision",
        _opt_str,
        "https proxy for the guest during the build only (default: $https_proxy)",
        metavar="URL",
    ),
    Option(
        "no-proxy",
        "provision",
        _opt_str,
        "hosts the guest reaches without proxy (default: $no_proxy)",
        metavar="HOSTS",
    ),
    Option(
        "output",
        "output",
        _opt_path,
        "output file (default: packer-maas's name, e.g. custom-cloudimg.tar.gz)",
        metavar="FILE",
    ),
    Option(
        "filetype", "output", _enum(FileType), "MAAS filetype of the output", _choices(FileType)
    ),
    Option(
        "compression", "output", _enum(Compression), "compression effort", _choices(Compression)
    ),
    Option(
        "curtin-hooks",
        "output",
        _opt_path,
        "ship this directory as /curtin instead of the built-in hooks",
        metavar="DIR",
    ),
    Option(
        "disk-backend",
        "output",
        _enum(DiskBackend),
        "how the finished disk is read: loop mount (root), nbdfuse+fuse2fs, or libguestfs",
        _choices(DiskBackend),
    ),
    Option(
        "source-date-epoch",
        "output",
        _opt_int,
        "clamp output mtimes to this time "
        "(default: $SOURCE_DATE_EPOCH, else the base image's date)",
        metavar="SECONDS",
    ),
    Option(
        "work-dir",
        "output",
        _opt_path,
        "where the build directory (overlay disk, logs) is made (default: a temp dir)",
        metavar="DIR",
    ),
    Option(
        "keep-disk", "output", _bool, "keep the build directory after a successful build", flag=True
    ),
)

BY_KEY = {o.key: o for o in OPTIONS}
