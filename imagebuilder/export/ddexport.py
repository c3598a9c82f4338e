"""Raw outputs (ddgz, ddxz, ddraw): the whole disk, with ``/curtin`` added, as one byte stream.

``/curtin`` (:mod:`imagebuilder.export.curtin`) is written into a throwaway
qcow2 overlay (:mod:`imagebuilder.export.overlay`): by debugfs for an ext2/3/4
root unless ``--disk-backend guestfs`` (timestamps fixed to SOURCE_DATE_EPOCH,
or to the root directory's mtime without one), by libguestfs otherwise. The
overlay's whole disk is then read through libnbd; zero extents (NBD block
status) are fed to the compressor as zeros without reading them, and become
holes in a ddraw file.

This module never writes to the disk or its base (only to the overlay), and
never writes an intermediate uncompressed file.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from ..config.tree import Config, DiskBackend
from ..disk import access, backends, root_mount
from ..errors import DiskError
from ..progress import Progress
from ..sources.basedisk import BaseDisk
from . import compress, curtin, overlay
from .appliance_tcg import force_tcg
from .facts import Facts
from .filetypes import codec_for
from .outfile import AtomicOutput
from .throttle import Throttle


def export_raw(
    info: access.DiskInfo,
    cfg: Config,
    base: BaseDisk | None,
    work: Path,
    sink: AtomicOutput,
    facts: Facts,
    progress: Progress,
) -> None:
    with access.serve(info, work) as server:
        layout = server.layout()
    root = root_mount.find_root(layout)
    use_debugfs = root.fstype in backends.EXT and cfg.output.disk_backend is not DiskBackend.GUESTFS
    facts.root = f"{root.number}:{root.fstype}"
    facts.backend = "debugfs" if use_debugfs else "guestfs"
    if not use_debugfs:
        from ..disk import appliance

        if (missing := appliance.unavailable_reason()) is not None:
            raise DiskError(
                f"cannot add /curtin to the {root.fstype} root of a dd image: {missing}",
                hint=f"{backends.GUESTFS_KERNEL_FIX}, or make a tar output (--filetype tgz)",
            )
    ov = overlay.create(info, work)
    if use_debugfs:
        if root.needs_recovery:
            raise DiskError(
                f"the root filesystem of {info.path.name} was not cleanly unmounted",
                hint="run e2fsck on it first, or use --disk-backend guestfs",
            )
        with access.serve(ov, work, writable=True, fuse=True, nbd=False, name="edit") as server:
            assert server.fuse_file is not None
            ed = overlay.DebugfsEditor(server.fuse_file, root.start, work, None)
            if facts.epoch is None:
                facts.epoch = ed.root_mtime()
            ed.fake_time = facts.epoch
            ed.commit(_add_curtin(ed, cfg, base, facts))
    else:
        from ..disk import appliance

        with appliance.editor(ov, layout, force_tcg=force_tcg(cfg, progress)) as ged:
            if facts.epoch is None:
                facts.epoch = ged.root_mtime()
            _add_curtin(ged, cfg, base, facts)
    with access.serve(ov, work, name="overlay") as server:
        _stream_disk(server, cfg, sink, facts, progress)


def _add_curtin(
    ed: overlay.Editor, cfg: Config, base: BaseDisk | None, facts: Facts
) -> dict[str, int]:
    existing = ed.listdir("/curtin")
    files = curtin.hook_files(cfg, base, existing or [])
    facts.curtin = [f.name for f in files if not f.is_dir]
    facts.package_db = ed.read("/" + cfg.release.family.packages.database)
    return overlay.add_curtin(ed, files, existing is not None, facts.epoch or 0)


def _stream_disk(
    server: access.Server, cfg: Config, sink: AtomicOutput, facts: Facts, progress: Progress
) -> None:
    codec = codec_for(cfg.output.filetype, cfg.output.compression)
    size = server.info.virtual_size
    tick = Throttle(progress, "export", size)
    with contextlib.ExitStack() as stack:
        out: Any = sink
        if codec is not None:
            out = stack.enter_context(compress.Compressor(sink.write, codec))
        for offset, length, zero in server.extents():
            if zero:
                out.write_zeros(length)
                tick(offset + length)
                continue
            for pos in range(offset, offset + length, 4 << 20):
                out.write(server.read(pos, min(4 << 20, offset + length - pos)))
                tick(pos)
    tick.finish()
    facts.stream_bytes = size
