"""ISO images built for tests with pycdlib, laid out like the installer ISOs we read."""

from __future__ import annotations

import io
from pathlib import Path

import pycdlib


def iso9660_name(path: str) -> str:
    """Our own ISO 9660 level-1 spelling, independent of the code under test."""
    *dirs, name = path.strip("/").upper().split("/")
    dirs = [d.lstrip(".").replace("-", "_")[:8] for d in dirs]
    stem, _, ext = name.lstrip(".").partition(".")
    return "/" + "/".join([*dirs, f"{stem[:8]}.{ext[:3]};1"])


def make_iso(
    dest: Path, files: dict[str, bytes], *, rock_ridge: bool = True, joliet: bool = False
) -> Path:
    """An ISO holding ``files`` (path -> bytes), directories made as needed."""
    out = pycdlib.PyCdlib()
    out.new(
        interchange_level=1,
        # the real volume id; Joliet allows only 16 characters
        vol_ident="Ubuntu-Server 22.04.4 LTS amd64"[: 16 if joliet else 32],
        rock_ridge="1.09" if rock_ridge else None,
        joliet=3 if joliet else None,
    )
    made: set[str] = set()
    for name, data in files.items():
        parts = name.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in made:
                made.add(d)
                out.add_directory(
                    iso9660_name(d).rsplit(".", 1)[0],
                    rr_name=parts[i - 1] if rock_ridge else None,
                    joliet_path=f"/{d}" if joliet else None,
                )
        out.add_fp(
            io.BytesIO(data),
            len(data),
            iso9660_name(name),
            rr_name=parts[-1] if rock_ridge else None,
            joliet_path=f"/{name}" if joliet else None,
        )
    out.write(str(dest))
    out.close()
    return dest
