"""Tar outputs (tgz, txz, tbz): the root filesystem as one reproducible, compressed tar stream.

The root filesystem (with an XBOOTLDR /boot as ``boot/``) is mounted read-only
(:mod:`imagebuilder.disk`) and streamed by :mod:`imagebuilder.export.tarstream`
through :mod:`imagebuilder.export.compress` straight into the output; with the
libguestfs backend, the appliance's ``tar-out`` stream is re-tarred the same
way. ``/curtin`` (:mod:`imagebuilder.export.curtin`) and an emptied
``etc/machine-id`` (as packer-maas does) are added to the stream, not to the
disk. Without a SOURCE_DATE_EPOCH, mtimes are kept as they are (which is what
clamping to the newest mtime would give) and the added files take the root
directory's mtime, so repeated exports still match.

This module never writes to the disk, and never writes an intermediate
uncompressed file: the stream goes straight into the output.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..config.tree import Config, DiskBackend
from ..disk import access, backends, parttable, root_files, root_mount
from ..progress import Progress
from ..sources.basedisk import BaseDisk
from . import compress, curtin, tarstream
from .appliance_tcg import force_tcg
from .facts import Facts
from .filetypes import codec_for
from .outfile import AtomicOutput
from .throttle import Throttle

#: Files whose content tar outputs drop (packer-maas truncates machine-id the same way).
EMPTIED = ("etc/machine-id",)


def _curtin_overlay(
    existing: list[str] | None, files: list[curtin.HookFile], mtime: int
) -> dict[str, tarstream.Synthetic]:
    ov: dict[str, tarstream.Synthetic] = {}
    if existing is None:
        ov["curtin"] = tarstream.Synthetic(stat.S_IFDIR | 0o755, mtime=mtime)
    for f in files:
        ov[f"curtin/{f.name}"] = tarstream.Synthetic(f.mode, data=f.data, mtime=mtime)
    return ov


def export_tar(
    info: access.DiskInfo,
    cfg: Config,
    base: BaseDisk | None,
    work: Path,
    sink: AtomicOutput,
    facts: Facts,
    progress: Progress,
) -> None:
    codec = codec_for(cfg.output.filetype, cfg.output.compression)
    assert codec is not None
    want_fuse = cfg.output.disk_backend is not DiskBackend.GUESTFS
    with access.serve(info, work, fuse=want_fuse) as server:
        layout = server.layout()
        root = root_mount.find_root(layout)
        backend = _backend(cfg, root, progress)
        facts.root, facts.backend = f"{root.number}:{root.fstype}", backend.value
        if backend is not DiskBackend.GUESTFS:
            if root.needs_recovery:
                progress.warning(
                    f"the root filesystem of {info.path.name} was not cleanly unmounted; "
                    "reading it without replaying its journal"
                )
            with root_mount.mount_root(server, layout, backend, work) as view:
                _tar_mounted(view, cfg, base, sink, facts, progress, codec)
            return
    _tar_guestfs(info, layout, cfg, base, work, sink, facts, progress, codec)


def _backend(cfg: Config, root: parttable.Partition, progress: Progress) -> DiskBackend:
    """The disk backend, telling the user when auto falls back from libguestfs."""
    from ..disk import appliance

    requested = cfg.output.disk_backend
    missing = None
    if requested is DiskBackend.AUTO and root.fstype not in backends.EXT:
        missing = appliance.unavailable_reason()
    backend = backends.choose_backend(requested, root, guestfs_missing=missing)
    if missing is not None:
        progress.info(
            f"libguestfs cannot run here ({missing}): "
            f"reading the {root.fstype} root with a loop mount instead"
        )
    return backend


def _tar_mounted(
    view: root_mount.RootView,
    cfg: Config,
    base: BaseDisk | None,
    sink: AtomicOutput,
    facts: Facts,
    progress: Progress,
    codec: compress.Codec,
) -> None:
    facts.package_db = root_files.read_in_root(view.root, cfg.release.family.packages.database)
    existing = root_files.listdir_in_root(view.root, "curtin")
    files = curtin.hook_files(cfg, base, existing or [])
    facts.curtin = [f.name for f in files if not f.is_dir]
    mtime = facts.epoch if facts.epoch is not None else view.root.stat().st_mtime_ns // 10**9
    tick = Throttle(
        progress,
        "export",
        sum(
            (v.f_blocks - v.f_bfree) * v.f_frsize
            for v in map(os.statvfs, filter(None, (view.root, view.boot)))
        ),
    )
    with compress.Compressor(sink.write, codec) as comp:
        stats = tarstream.write_tree(
            comp,
            view.root,
            epoch=facts.epoch,
            overlay=_curtin_overlay(existing, files, mtime),
            mounts={"boot": view.boot} if view.boot is not None else None,
            emptied=EMPTIED,
            on_progress=tick,
        )
    tick.finish()
    facts.stream_bytes, facts.emptied = comp.size, stats.emptied


def _tar_guestfs(
    info: access.DiskInfo,
    layout: parttable.Layout,
    cfg: Config,
    base: BaseDisk | None,
    work: Path,
    sink: AtomicOutput,
    facts: Facts,
    progress: Progress,
    codec: compress.Codec,
) -> None:
    from ..disk import appliance
    from . import retar

    progress.info("reading the disk through libguestfs (starting its appliance)")
    with retar.Spool(work) as spool:  # sorted as write_tree sorts, so loop and libguestfs agree
        with appliance.session(info, readonly=True, force_tcg=force_tcg(cfg, progress)) as g:
            appliance.mount_fs(g, layout, readonly=True)
            reader = appliance.GuestfsEditor(g)
            facts.package_db = reader.read("/" + cfg.release.family.packages.database)
            existing = reader.listdir("/curtin")
            files = curtin.hook_files(cfg, base, existing or [])
            facts.curtin = [f.name for f in files if not f.is_dir]
            mtime = facts.epoch if facts.epoch is not None else reader.root_mtime()
            read = Throttle(progress, "read", reader.used_bytes())
            with appliance.tar_out(g, work) as stream:
                spool.take(stream, on_progress=read)
            read.finish()
            sparse = appliance.sparse_files(g, spool.maybe_sparse())
        tick = Throttle(progress, "export", spool.data_bytes)
        with compress.Compressor(sink.write, codec) as comp:
            stats = spool.write(
                comp,
                epoch=facts.epoch,
                sparse=sparse,
                overlay=_curtin_overlay(existing, files, mtime),
                emptied=EMPTIED,
                on_progress=tick,
            )
    tick.finish()
    facts.stream_bytes, facts.emptied = comp.size, stats.emptied
