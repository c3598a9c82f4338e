"""The build, as a recipe: base disk (or installed disk) -> build VM -> export -> (upload).

``build(config, progress=...)`` is the library entry point behind
``python -m imagebuilder SERIES``. Every resource a build holds (the build
directory, the VM, mounts, servers) lives on one ExitStack, so an error or Ctrl-C
anywhere leaves nothing behind. This module calls the step modules; it does not
do their work, and it never prints.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .base.obtain import obtain_base
from .config.tree import BaseKind, Config, Layout
from .errors import ConfigError, ImageBuilderError
from .progress import Progress
from .repro.lockfile import Lock
from .sources.basedisk import BaseDisk

log = logging.getLogger("imagebuilder.pipeline")


@dataclass(frozen=True)
class BuildResult:
    output: Path
    manifest: Path
    sha256: str
    size: int
    filetype: str
    timings: dict[str, float] = field(default_factory=dict)
    build_dir: Path | None = None  # kept only with --keep-disk


def get_base(cfg: Config, progress: Progress, *, lock: Lock | None = None) -> BaseDisk:
    """The cached base disk for ``cfg``: downloaded and verified, or bootstrapped.

    With a ``lock``, anything that would resolve differently is refused: before any
    download or bootstrap where that can be known, and on the base itself after.
    """
    if lock is not None:
        from .repro import lock_check as locking

        locking.check_locked(cfg, lock)
        cfg = locking.pin_config(cfg, lock)
    if lock is not None and cfg.source.base is BaseKind.BOOTSTRAP and not cfg.source.offline:
        locking.check_mirror(cfg, lock, progress)
    base = obtain_base(cfg, progress)
    if lock is not None:
        locking.check_base(base, lock)
    return base


def failure_log_dir(cfg: Config) -> Path:
    return cfg.source.cache_dir / "logs" / "last-failure"


@contextlib.contextmanager
def build_directory(cfg: Config) -> Iterator[Path]:
    """A private build directory, removed afterwards (kept with --keep-disk on success).

    On failure its logs (serial console, build log) are copied to
    ``<cache>/logs/last-failure/`` first, so nothing needed to debug is lost.
    """
    parent = cfg.output.work_dir
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="imagebuilder-", dir=parent))
    ok = False
    try:
        yield path
        ok = True
    finally:
        if not ok:
            _save_logs(path, failure_log_dir(cfg))
        if not (ok and cfg.output.keep_disk):
            shutil.rmtree(path, ignore_errors=True)


def _save_logs(build_dir: Path, dest: Path) -> None:
    logs = [p for p in build_dir.glob("*.log") if p.is_file()]
    if not logs:
        return
    with contextlib.suppress(OSError):
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True, exist_ok=True)
        for p in logs:
            shutil.copy2(p, dest / p.name)


def build(
    cfg: Config,
    *,
    progress: Progress | None = None,
    lock: Lock | None = None,
    debug_shell: bool = False,
) -> BuildResult:
    """Build the image ``cfg`` describes and return where it is.

    ``lock``: see :func:`get_base`. ``debug_shell``: on a provisioning failure, open
    an interactive shell on the build VM before it is torn down.
    """
    progress = progress or Progress()
    from .export.recipe import export_disk
    from .vm.provision import provision

    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        build_dir = stack.enter_context(build_directory(cfg))
        if cfg.layout is Layout.CLOUDIMG:
            with progress.stage("base", f"{cfg.series} {cfg.arch} ({cfg.source.base.value})"):
                base = get_base(cfg, progress, lock=lock)
        else:
            if lock is not None:
                raise ConfigError(
                    "--locked does not cover installer builds yet",
                    hint="lock a --layout cloudimg build, or drop --locked",
                )
            from .installer.build import install_disk

            with progress.stage("install", f"{cfg.series} {cfg.arch} ({cfg.layout.value})"):
                base = install_disk(cfg, build_dir, progress)
        with progress.stage("vm", "boot, provision and power off the build VM"):
            disk = provision(base, cfg, build_dir, progress, debug_shell=debug_shell)
        with progress.stage("export", cfg.output.filetype.value):
            result = export_disk(disk, cfg, base=base, progress=progress)
        if lock is not None:
            from .export.manifest import amend

            amend(result.manifest_path, "lock", {"digest": lock.digest, "tool": lock.tool_version})
        kept = build_dir if cfg.output.keep_disk else None
    progress.info(f"built {result.path} ({result.size} bytes) in {time.monotonic() - start:.0f} s")
    return BuildResult(
        output=result.path,
        manifest=result.manifest_path,
        sha256=result.sha256,
        size=result.size,
        filetype=result.filetype.value,
        timings=dict(progress.timings),
        build_dir=kept,
    )


__all__ = ["BuildResult", "ImageBuilderError", "build", "get_base"]
