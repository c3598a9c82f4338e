"""The closed sets of values options take (firmware, accelerator, filetype, ...).

Plain enums, shared by ``config`` (the dataclass tree), ``options`` (the option
table) and the step modules. No logic beyond a property or two.
"""

from __future__ import annotations

import enum


class BaseKind(str, enum.Enum):
    CLOUD = "cloud"  # the distribution's cloud image, downloaded and verified
    BOOTSTRAP = "bootstrap"  # built from an apt mirror with mmdebstrap, no VM


class Layout(str, enum.Enum):
    CLOUDIMG = "cloudimg"
    FLAT = "flat"
    LVM = "lvm"


class Firmware(str, enum.Enum):
    UEFI = "uefi"
    BIOS = "bios"


class Accel(str, enum.Enum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


class Compression(str, enum.Enum):
    FAST = "fast"
    DEFAULT = "default"
    BEST = "best"


class FileType(str, enum.Enum):
    TGZ = "tgz"
    TXZ = "txz"
    TBZ = "tbz"
    DDGZ = "ddgz"
    DDXZ = "ddxz"
    DDRAW = "ddraw"

    @property
    def is_raw(self) -> bool:
        return self.value.startswith("dd")


class DiskBackend(str, enum.Enum):
    AUTO = "auto"
    LOOP = "loop"
    FUSE = "fuse"
    GUESTFS = "guestfs"
