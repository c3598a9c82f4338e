"""What a base disk is, whichever way it was obtained.

``sources`` (downloaded or local cloud images) and ``bootstrap`` (mmdebstrap-built
disks) both hand the pipeline a :class:`BaseDisk`: a read-only file in the cache
plus the facts the manifest and the export need. This module holds only that
record; it does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BaseDisk:
    path: Path  # the cached image; never written to (overlays are backed by it)
    format: str  # qemu format name: "qcow2" | "raw" | ...
    sha256: str  # digest of the file (downloads) or of the bootstrap recipe key
    origin: str  # URL, local path, or "mmdebstrap <suite> <mirror>"
    date: int  # epoch seconds; the default SOURCE_DATE_EPOCH of outputs
    kind: str  # "cloud" | "bootstrap"
    #: Kernel package the base already carries and keeps (bootstrap bases), if any.
    kernel: str | None = None
