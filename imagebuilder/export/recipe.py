"""The export stage: a finished disk becomes the file MAAS takes, its manifest and SUMS line.

:func:`export_disk` picks the output path (``custom-cloudimg.tar.gz`` and the
like, by layout and filetype), probes the disk, and hands it to
:mod:`imagebuilder.export.tarexport` (tgz, txz, tbz) or
:mod:`imagebuilder.export.ddexport` (ddgz, ddxz, ddraw), which write it into an
:class:`~imagebuilder.export.outfile.AtomicOutput`; then
:mod:`imagebuilder.export.manifest` writes what they learnt beside it.

SOURCE_DATE_EPOCH: ``cfg.output.source_date_epoch``, else the base image's date,
else (``imagebuilder export`` of a disk of unknown origin) none: mtimes then stay
as they are and the added files take the root directory's mtime (in
:mod:`~imagebuilder.export.tarexport` and :mod:`~imagebuilder.export.ddexport`).

This module reads no disk and writes no byte of the output itself; it only
decides where the output goes and which path makes it.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..config.tree import Config, FileType, Layout
from ..disk import access
from ..errors import ExportError
from ..progress import Progress
from ..sources.basedisk import BaseDisk
from . import ddexport, manifest, tarexport
from .facts import Facts
from .filetypes import SUFFIXES
from .outfile import AtomicOutput

NAMES = {
    Layout.CLOUDIMG: "custom-cloudimg",
    Layout.FLAT: "custom-ubuntu",
    Layout.LVM: "custom-ubuntu-lvm",
}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    sha256: str
    size: int
    filetype: FileType
    manifest_path: Path
    sums_path: Path


def default_output(cfg: Config) -> Path:
    return Path.cwd() / (NAMES[cfg.layout] + SUFFIXES[cfg.output.filetype])


def export_disk(
    disk_path: Path,
    cfg: Config,
    *,
    base: BaseDisk | None,
    progress: Progress,
    output: Path | None = None,
) -> ExportResult:
    """Export ``disk_path`` as ``cfg.output.filetype``; returns where and what was written."""
    ft = cfg.output.filetype
    out = Path(output or cfg.output.output or default_output(cfg)).absolute()
    if out.is_dir():
        out = out / default_output(cfg).name
    epoch = cfg.output.source_date_epoch
    if epoch is None and base is not None:
        epoch = base.date
    with contextlib.ExitStack() as stack:
        work = Path(
            stack.enter_context(
                tempfile.TemporaryDirectory(
                    prefix="imagebuilder-export-",
                    dir=cfg.output.work_dir,
                    ignore_cleanup_errors=True,
                )
            )
        )
        info = access.probe(Path(disk_path))
        facts = Facts(epoch=epoch)
        progress.info(f"exporting {info.path.name} ({info.format}) to {out} ({ft.value})")
        sink = stack.enter_context(AtomicOutput(out))  # renamed into place when the block ends
        try:
            if ft.is_raw:
                ddexport.export_raw(info, cfg, base, work, sink, facts, progress)
            else:
                tarexport.export_tar(info, cfg, base, work, sink, facts, progress)
        except OSError as exc:
            raise ExportError(
                f"export of {info.path} failed: {exc}", hint="check free space and the disk image"
            ) from exc
    sha = sink.sha.hexdigest()
    manifest_path, sums_path = manifest.write(
        out,
        cfg=cfg,
        base=base,
        disk=info,
        sha256=sha,
        size=sink.size,
        facts={
            "source_date_epoch": facts.epoch,
            "root": facts.root,
            "backend": facts.backend,
            "curtin": facts.curtin,
            "emptied": facts.emptied,
            "uncompressed_size": facts.stream_bytes,
        },
        package_db=facts.package_db,
    )
    progress.info(f"{out} ({sink.size} bytes, sha256 {sha})")
    return ExportResult(out, sha, sink.size, ft, manifest_path, sums_path)
