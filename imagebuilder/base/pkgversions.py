"""Package versions of a cached base, read from its disk (meta.json first).

The family of the base names its package database and how to read versions from
it; this module finds that file on the disk (``qemu-img`` to a sparse raw copy,
``debugfs`` on each partition, without root) and memoises the answer. It never
boots a VM and never changes the disk.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..disk import parttable
from ..errors import SourceError
from ..families.seam import Family
from ..run import run
from ..sources import cache


def disk_versions(disk: Path, family: Family) -> dict[str, str]:
    """Installed package versions of the Linux root on ``disk`` (qcow2 or raw), without root.

    qemu-img makes a sparse raw copy; debugfs reads the family's package database from
    each partition, the biggest first, until one holds installed packages.
    """
    db = family.packages.database
    with tempfile.TemporaryDirectory(prefix="imagebuilder-status-") as tmp:
        raw = Path(tmp) / "disk.raw"
        fmt = cache.detect_format(disk)
        run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", disk, raw])
        with raw.open("rb") as f:

            def read(offset: int, size: int) -> bytes:
                f.seek(offset)
                return f.read(size)

            layout = parttable.read_layout(read, raw.stat().st_size)
        biggest_first = sorted(layout.partitions, key=lambda p: -p.size)
        for offset in [p.start for p in biggest_first] or [0]:
            proc = run(["debugfs", "-R", f"cat /{db}", f"{raw}?offset={offset}"], check=False)
            versions = _versions(family, proc.stdout)
            if proc.returncode == 0 and versions:
                return versions
    raise SourceError(
        f"no /{db} on any partition of {disk}",
        hint=f"the cached base disk is not a {family.title} root; remove it and build again",
    )


def _versions(family: Family, database: bytes) -> dict[str, str]:
    """Installed name -> version, from the family's own reading of its database."""
    pkgs = family.packages.parse_database(database)
    return dict(sorted((p["name"], p["version"]) for p in pkgs if p["version"]))


#: (disk path, size, mtime_ns, inode) -> versions: a build checks one base more than once.
_MEMO: dict[tuple[str, int, int, int], dict[str, str]] = {}


def base_versions(base_dir: Path, family: Family) -> dict[str, str]:
    """Installed packages of a cached bootstrap base: meta.json ``versions``, else its disk."""
    meta = cache.read_json(base_dir / "meta.json") or {}
    versions = meta.get("versions")
    if isinstance(versions, dict) and versions:
        return {str(k): str(v) for k, v in sorted(versions.items())}
    disk = (base_dir / "disk.qcow2").resolve()
    st = disk.stat()
    key = (str(disk), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _MEMO:
        _MEMO[key] = disk_versions(disk, family)
    return dict(_MEMO[key])
