"""What each MAAS filetype means for the bytes written: its file-name suffix and its compressor.

This module only names things: it compresses nothing and opens no file
(:mod:`imagebuilder.export.compress` does the compressing).
"""

from __future__ import annotations

from ..config.tree import Compression, FileType
from . import compress

SUFFIXES = {
    FileType.TGZ: ".tar.gz",
    FileType.TXZ: ".tar.xz",
    FileType.TBZ: ".tar.bz2",
    FileType.DDGZ: ".dd.gz",
    FileType.DDXZ: ".dd.xz",
    FileType.DDRAW: ".dd",
}


def codec_for(filetype: FileType, effort: Compression) -> compress.Codec | None:
    if filetype in (FileType.TGZ, FileType.DDGZ):
        return compress.gzip_codec(effort.value)
    if filetype in (FileType.TXZ, FileType.DDXZ):
        return compress.xz_codec(effort.value)
    if filetype is FileType.TBZ:
        return compress.bzip2_codec(effort.value)
    return None
