"""The manifest and SHA256SUMS line written beside every output.

``<output>.manifest.json`` records what the file is and how it was made: the
resolved config (:func:`imagebuilder.config.to_dict`), the base image's origin
and digest, the disk that was exported, the packages installed in the image (from
the package database its family names), the output's sha256, size and MAAS filetype, and the
ready ``maas $PROFILE boot-resources create ...`` command. ``SHA256SUMS`` in the
same directory gets (or has replaced) the line for the output. Both are written
atomically. This module does not read disks or outputs.
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from ..config.tree import Config, Layout, to_dict
from ..disk.access import DiskInfo
from ..sources.basedisk import BaseDisk

SUMS = "SHA256SUMS"


def maas_fields(cfg: Config, path: Path, filetype: str) -> dict[str, str]:
    rel = cfg.release
    suffix = "" if cfg.layout is Layout.CLOUDIMG else f"-{cfg.layout.value}"
    return {
        "name": f"custom/{rel.distro}-{rel.codename}{suffix}",
        "title": f"{rel.family.title} {rel.version} {rel.codename}{suffix} (imagebuilder)",
        "architecture": f"{cfg.arch}/generic",
        "filetype": filetype,
        "base_image": rel.family.maas_base_image(rel),
        "content": path.name,
    }


def maas_command(fields: dict[str, str]) -> str:
    args = [f"{k}={shlex.quote(v)}" for k, v in fields.items() if k != "content"]
    return (
        "maas $PROFILE boot-resources create "
        + " ".join(args)
        + f" content@={shlex.quote(fields['content'])}"
    )


def _version() -> str:
    try:
        return metadata.version("imagebuilder")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare tree
        return "unknown"


def build(
    output: Path,
    *,
    cfg: Config,
    base: BaseDisk | None,
    disk: DiskInfo,
    sha256: str,
    size: int,
    facts: dict[str, Any],
    package_db: bytes | None,
) -> dict[str, Any]:
    maas = maas_fields(cfg, output, cfg.output.filetype.value)
    return {
        "imagebuilder": _version(),
        "output": {
            "file": output.name,
            "sha256": sha256,
            "size": size,
            "filetype": cfg.output.filetype.value,
            "compression": cfg.output.compression.value,
            **facts,
        },
        "maas": {**maas, "command": maas_command(maas)},
        "base": None
        if base is None
        else {
            "origin": base.origin,
            "sha256": base.sha256,
            "kind": base.kind,
            "date": base.date,
            "format": base.format,
            "kernel": base.kernel,
        },
        "disk": {
            "path": os.fspath(disk.path),
            "format": disk.format,
            "virtual_size": disk.virtual_size,
            "backing": disk.backing,
        },
        "packages": None
        if package_db is None
        else cfg.release.family.packages.parse_database(package_db),
        "config": to_dict(cfg),
    }


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".partial-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def update_sums(sums: Path, name: str, sha256: str) -> None:
    """Add or replace the ``<sha256> *<name>`` line for ``name`` in ``sums``."""
    lines = sums.read_text().splitlines() if sums.exists() else []
    kept = [ln for ln in lines if ln.split(maxsplit=1)[1:] not in ([name], [f"*{name}"])]
    kept.append(f"{sha256} *{name}")
    _atomic_write(sums, "\n".join(sorted(kept, key=lambda ln: ln.split()[-1].lstrip("*"))) + "\n")


def write(output: Path, **kwargs: Any) -> tuple[Path, Path]:
    """Write ``<output>.manifest.json`` and update ``SHA256SUMS``; return both paths."""
    data = build(output, **kwargs)
    mpath = output.with_name(output.name + ".manifest.json")
    _atomic_write(mpath, json.dumps(data, indent=2, sort_keys=False) + "\n")
    sums = output.with_name(SUMS)
    update_sums(sums, output.name, data["output"]["sha256"])
    return mpath, sums


def amend(manifest: Path, key: str, value: Any) -> None:
    """Add one top-level entry (e.g. the lock a build was held to) to a written manifest."""
    data = json.loads(manifest.read_text())
    data[key] = value
    _atomic_write(manifest, json.dumps(data, indent=2, sort_keys=False) + "\n")
