"""What an export learnt about the disk on its way, for the manifest.

The tar and dd paths fill one :class:`Facts` as they go (the epoch they used,
the root they read, the ``/curtin`` files they added, the package database...);
:func:`imagebuilder.export.recipe.export_disk` hands it to the manifest.

This module holds data only: it reads, decides and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Facts:
    """What the export learnt, for the manifest."""

    epoch: int | None = None
    root: str = ""
    backend: str = ""
    package_db: bytes | None = None  # the family's installed-package database
    curtin: list[str] = field(default_factory=list)
    emptied: list[str] = field(default_factory=list)
    stream_bytes: int = 0
