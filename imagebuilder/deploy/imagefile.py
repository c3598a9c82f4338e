"""What kind of MAAS file an output is, read from its manifest or its first bytes.

``imagebuilder test`` must deploy a file the way MAAS would for its filetype, so
the type is read before any VM starts: from ``<file>.manifest.json`` when there is
one, else sniffed (compression by magic, then a tar header or a partition table in
the first decompressed MiB). Unknown files are a ConfigError naming the fix. This
module does not deploy anything.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
from pathlib import Path

from ..config.choices import FileType
from ..errors import ConfigError
from ..export.outputlint import compression

_TAR = {"gzip": FileType.TGZ, "xz": FileType.TXZ, "bzip2": FileType.TBZ}
_DD = {"gzip": FileType.DDGZ, "xz": FileType.DDXZ, "raw": FileType.DDRAW}


def _compression(head: bytes) -> str:
    found = compression(head)  # the same magic bytes `inspect` reads
    return "raw" if found == "none" else found


def _open(path: Path, kind: str) -> io.BufferedIOBase:
    if kind == "gzip":
        return gzip.open(path, "rb")
    if kind == "xz":
        return lzma.open(path, "rb")
    if kind == "bzip2":
        return bz2.open(path, "rb")
    return open(path, "rb")


def _first_mib(path: Path, kind: str) -> bytes:
    try:
        with _open(path, kind) as fh:
            return fh.read(1 << 20)
    except (OSError, EOFError, lzma.LZMAError) as exc:
        hint = "pass an imagebuilder output or a MAAS image file"
        raise ConfigError(f"{path}: cannot read it as {kind} ({exc})", hint=hint) from None


def filetype_of(path: Path) -> FileType:
    """The MAAS filetype of ``path``; ConfigError if it is none MAAS takes."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file", hint="give the path of a built image")
    manifest = path.with_name(path.name + ".manifest.json")
    if manifest.is_file():
        try:
            return FileType(json.loads(manifest.read_text())["output"]["filetype"])
        except (ValueError, KeyError, TypeError):
            pass  # an unreadable manifest: sniff instead
    with open(path, "rb") as fh:
        kind = _compression(fh.read(6))
    data = _first_mib(path, kind)
    if data[257:262] == b"ustar" and kind in _TAR:
        return _TAR[kind]
    if (data[510:512] == b"\x55\xaa" or data[512:520] == b"EFI PART") and kind in _DD:
        return _DD[kind]
    raise ConfigError(
        f"{path}: not a root tarball or disk image MAAS can deploy ({kind} data)",
        hint="MAAS takes tgz/txz/tbz root tarballs and ddgz/ddxz/ddraw disks",
    )
