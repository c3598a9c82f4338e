"""Turn a finished disk into the file MAAS takes, plus its manifest and SHA256SUMS line.

Tar outputs (tgz, txz, tbz): the root filesystem (with an XBOOTLDR /boot as
``boot/``) is mounted read-only (:mod:`imagebuilder.disk`) and streamed by
:mod:`imagebuilder.export.tarstream` through :mod:`imagebuilder.export.compress` straight into
the output; ``/curtin`` (:mod:`imagebuilder.export.curtin`) and an emptied
``etc/machine-id`` (as packer-maas does) are added to the stream, not to the disk.

Raw outputs (ddgz, ddxz, ddraw): ``/curtin`` is written into a throwaway qcow2
overlay (:mod:`imagebuilder.export.overlay`), whose whole disk is read through libnbd;
zero extents (NBD block status) are fed to the compressor as zeros without
reading them, and become holes in a ddraw file.

The output is written to ``<out>.partial-XXXX`` beside it, hashed as it is
written, and renamed only when complete; on any error or Ctrl-C the partial file
is removed. No intermediate uncompressed file is ever written.

SOURCE_DATE_EPOCH: ``cfg.output.source_date_epoch``, else the base image's date.
Without either (``imagebuilder export`` of a disk of unknown origin) mtimes are
kept as they are (which is what clamping to the newest mtime would give) and the
added files take the root directory's mtime, so repeated exports still match.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.tree import Compression, Config, DiskBackend, FileType, Layout
from ..disk import access, parttable
from ..errors import DiskError, ExportError
from ..progress import Progress
from ..sources.basedisk import BaseDisk
from . import compress, curtin, manifest, overlay, tarstream

NAMES = {
    Layout.CLOUDIMG: "custom-cloudimg",
    Layout.FLAT: "custom-ubuntu",
    Layout.LVM: "custom-ubuntu-lvm",
}
#: Files whose content tar outputs drop (packer-maas truncates machine-id the same way).
EMPTIED = ("etc/machine-id",)
SUFFIXES = {
    FileType.TGZ: ".tar.gz",
    FileType.TXZ: ".tar.xz",
    FileType.TBZ: ".tar.bz2",
    FileType.DDGZ: ".dd.gz",
    FileType.DDXZ: ".dd.xz",
    FileType.DDRAW: ".dd",
}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    sha256: str
    size: int
    filetype: FileType
    manifest_path: Path
    sums_path: Path


@dataclass
class _Facts:
    """What the export learnt, for the manifest."""

    epoch: int | None = None
    root: str = ""
    backend: str = ""
    package_db: bytes | None = None  # the family's installed-package database
    curtin: list[str] = field(default_factory=list)
    emptied: list[str] = field(default_factory=list)
    stream_bytes: int = 0


def default_output(cfg: Config) -> Path:
    return Path.cwd() / (NAMES[cfg.layout] + SUFFIXES[cfg.output.filetype])


def codec_for(filetype: FileType, effort: Compression) -> compress.Codec | None:
    if filetype in (FileType.TGZ, FileType.DDGZ):
        return compress.gzip_codec(effort.value)
    if filetype in (FileType.TXZ, FileType.DDXZ):
        return compress.xz_codec(effort.value)
    if filetype is FileType.TBZ:
        return compress.bzip2_codec(effort.value)
    return None


class AtomicOutput:
    """``<dest>.partial-XXXX`` while writing (hashed on the way), renamed when complete."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.sha = hashlib.sha256()
        self.size = 0
        self._tmp: Path | None = None
        self._f: Any = None

    def __enter__(self) -> AtomicOutput:
        if not self.dest.parent.is_dir():
            raise ExportError(
                f"output directory {self.dest.parent} does not exist",
                hint="create it or choose another -o",
            )
        fd, tmp = tempfile.mkstemp(dir=self.dest.parent, prefix=self.dest.name + ".partial-")
        self._tmp = Path(tmp)
        self._f = os.fdopen(fd, "wb", buffering=1 << 20)
        return self

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._f.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def write_zeros(self, n: int) -> None:
        """Zeros as a hole (ddraw): hashed, not written."""
        zeros = bytes(min(n, 1 << 20))
        left = n
        while left:
            k = min(left, len(zeros))
            self.sha.update(zeros[:k])
            left -= k
        self._f.seek(n, os.SEEK_CUR)
        self.size += n

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self._tmp is not None
        try:
            if exc_type is None:
                self._f.truncate(self.size)
                self._f.flush()
                os.fsync(self._f.fileno())
                umask = os.umask(0o022)
                os.umask(umask)
                os.fchmod(self._f.fileno(), 0o666 & ~umask)
            self._f.close()
            if exc_type is None:
                os.replace(self._tmp, self.dest)
        finally:
            self._tmp.unlink(missing_ok=True)  # gone already after a successful rename


class _Throttle:
    """Progress counter events at most every 0.2 s (a tar of small files calls often)."""

    def __init__(self, progress: Progress, name: str, total: int | None) -> None:
        self.progress, self.name, self.total, self.last = progress, name, total, 0.0

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= 0.2:
            self.last = now
            self.progress.counter(self.name, done, self.total)

    def finish(self) -> None:
        self.progress.counter(self.name, self.total or 0, self.total)


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
        facts = _Facts(epoch=epoch)
        progress.info(f"exporting {info.path.name} ({info.format}) to {out} ({ft.value})")
        sink = stack.enter_context(AtomicOutput(out))  # renamed into place when the block ends
        try:
            if ft.is_raw:
                _export_raw(info, cfg, base, work, sink, facts, progress)
            else:
                _export_tar(info, cfg, base, work, sink, facts, progress)
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


def _curtin_overlay(
    existing: list[str] | None, files: list[curtin.HookFile], mtime: int
) -> dict[str, tarstream.Synthetic]:
    ov: dict[str, tarstream.Synthetic] = {}
    if existing is None:
        ov["curtin"] = tarstream.Synthetic(stat.S_IFDIR | 0o755, mtime=mtime)
    for f in files:
        ov[f"curtin/{f.name}"] = tarstream.Synthetic(f.mode, data=f.data, mtime=mtime)
    return ov


def _export_tar(
    info: access.DiskInfo,
    cfg: Config,
    base: BaseDisk | None,
    work: Path,
    sink: AtomicOutput,
    facts: _Facts,
    progress: Progress,
) -> None:
    codec = codec_for(cfg.output.filetype, cfg.output.compression)
    assert codec is not None
    want_fuse = cfg.output.disk_backend is not DiskBackend.GUESTFS
    with access.serve(info, work, fuse=want_fuse) as server:
        layout = server.layout()
        root = access.find_root(layout)
        backend = _backend(cfg, root, progress)
        facts.root, facts.backend = f"{root.number}:{root.fstype}", backend.value
        if backend is not DiskBackend.GUESTFS:
            if root.needs_recovery:
                progress.warning(
                    f"the root filesystem of {info.path.name} was not cleanly unmounted; "
                    "reading it without replaying its journal"
                )
            with access.mount_root(server, layout, backend, work) as view:
                _tar_mounted(view, cfg, base, sink, facts, progress, codec)
            return
    _tar_guestfs(info, layout, cfg, base, work, sink, facts, progress, codec)


def _backend(cfg: Config, root: parttable.Partition, progress: Progress) -> DiskBackend:
    """The disk backend, telling the user when auto falls back from libguestfs."""
    from ..disk import appliance

    requested = cfg.output.disk_backend
    missing = None
    if requested is DiskBackend.AUTO and root.fstype not in access.EXT:
        missing = appliance.unavailable_reason()
    backend = access.choose_backend(requested, root, guestfs_missing=missing)
    if missing is not None:
        progress.info(
            f"libguestfs cannot run here ({missing}): "
            f"reading the {root.fstype} root with a loop mount instead"
        )
    return backend


def _tar_mounted(
    view: access.RootView,
    cfg: Config,
    base: BaseDisk | None,
    sink: AtomicOutput,
    facts: _Facts,
    progress: Progress,
    codec: compress.Codec,
) -> None:
    facts.package_db = access.read_in_root(view.root, cfg.release.family.packages.database)
    existing = access.listdir_in_root(view.root, "curtin")
    files = curtin.hook_files(cfg, base, existing or [])
    facts.curtin = [f.name for f in files if not f.is_dir]
    mtime = facts.epoch if facts.epoch is not None else view.root.stat().st_mtime_ns // 10**9
    tick = _Throttle(
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
    facts: _Facts,
    progress: Progress,
    codec: compress.Codec,
) -> None:
    from ..disk import appliance

    progress.info("reading the disk through libguestfs (starting its appliance)")
    with appliance.session(info, readonly=True, force_tcg=_force_tcg(cfg, progress)) as g:
        appliance.mount_fs(g, layout, readonly=True)
        reader = appliance.GuestfsEditor(g)
        facts.package_db = reader.read("/" + cfg.release.family.packages.database)
        existing = reader.listdir("/curtin")
        files = curtin.hook_files(cfg, base, existing or [])
        facts.curtin = [f.name for f in files if not f.is_dir]
        mtime = facts.epoch if facts.epoch is not None else reader.root_mtime()
        tick = _Throttle(progress, "export", reader.used_bytes())
        with appliance.tar_out(g, work) as stream, compress.Compressor(sink.write, codec) as comp:
            stats = tarstream.retar(
                comp,
                stream,
                epoch=facts.epoch,
                overlay=_curtin_overlay(existing, files, mtime),
                emptied=EMPTIED,
                on_progress=tick,
            )
        tick.finish()
        facts.stream_bytes, facts.emptied = comp.size, stats.emptied


def _force_tcg(cfg: Config, progress: Progress) -> bool:
    """Whether libguestfs' appliance must run under TCG: when KVM does not run guests."""
    from ..vm import accel

    host = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    requested = cfg.machine.accel
    found = accel.probe_accel(host, progress, requested=requested, cache_dir=cfg.source.cache_dir)
    return found != "kvm"


def _export_raw(
    info: access.DiskInfo,
    cfg: Config,
    base: BaseDisk | None,
    work: Path,
    sink: AtomicOutput,
    facts: _Facts,
    progress: Progress,
) -> None:
    with access.serve(info, work) as server:
        layout = server.layout()
    root = access.find_root(layout)
    use_debugfs = root.fstype in access.EXT and cfg.output.disk_backend is not DiskBackend.GUESTFS
    facts.root = f"{root.number}:{root.fstype}"
    facts.backend = "debugfs" if use_debugfs else "guestfs"
    if not use_debugfs:
        from ..disk import appliance

        if (missing := appliance.unavailable_reason()) is not None:
            raise DiskError(
                f"cannot add /curtin to the {root.fstype} root of a dd image: {missing}",
                hint=f"{access.GUESTFS_KERNEL_FIX}, or make a tar output (--filetype tgz)",
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

        with appliance.editor(ov, layout, force_tcg=_force_tcg(cfg, progress)) as ged:
            if facts.epoch is None:
                facts.epoch = ged.root_mtime()
            _add_curtin(ged, cfg, base, facts)
    with access.serve(ov, work, name="overlay") as server:
        _stream_disk(server, cfg, sink, facts, progress)


def _add_curtin(
    ed: overlay.Editor, cfg: Config, base: BaseDisk | None, facts: _Facts
) -> dict[str, int]:
    existing = ed.listdir("/curtin")
    files = curtin.hook_files(cfg, base, existing or [])
    facts.curtin = [f.name for f in files if not f.is_dir]
    facts.package_db = ed.read("/" + cfg.release.family.packages.database)
    return overlay.add_curtin(ed, files, existing is not None, facts.epoch or 0)


def _stream_disk(
    server: access.Server, cfg: Config, sink: AtomicOutput, facts: _Facts, progress: Progress
) -> None:
    codec = codec_for(cfg.output.filetype, cfg.output.compression)
    size = server.info.virtual_size
    tick = _Throttle(progress, "export", size)
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
