"""Which files go into an image's ``/curtin`` directory, and with what modes.

MAAS's installer, curtin, runs ``/curtin/curtin-hooks`` (when executable)
instead of its built-in hooks, and for dd images takes the partition that has a
top-level ``curtin/`` as the root. This module decides the contents:

- ``--curtin-hooks DIR``: every file of DIR (sub-directories included) replaces
  or adds to what the disk has;
- installer builds (``--layout flat|lvm``): the installer hooks of
  ``curtin_hooks/installer/`` and the ``--packages`` debs
  (:func:`installer_hook_files`);
- otherwise the built-in cloud-image hook (top-level ``curtin_hooks/curtin-hooks``)
  unless the disk already carries its own ``/curtin/curtin-hooks``;
- ``CUSTOM_KERNEL`` naming the kernel package to keep (``--kernel`` or the base's
  kernel) unless the disk or DIR already has one.

``curtin-hooks`` is 0750 root:root, other executables 0750, other files 0644,
directories 0755. It returns data only: :mod:`imagebuilder.export` adds it to the
output stream (tar) or to a throwaway overlay (dd), never to the build disk.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from ..config.tree import Config, Layout
from ..errors import ConfigError, ExportError
from ..resources import data_dir
from ..sources.basedisk import BaseDisk

HOOK = "curtin-hooks"
PIN = "CUSTOM_KERNEL"
BUILTIN_DIR = data_dir("curtin_hooks")
HOOKS_DIR = BUILTIN_DIR / "installer"  # the installer-built images' hooks
PACKAGES_ARCHIVE = "custom-packages.tar.gz"


@dataclass(frozen=True)
class HookFile:
    name: str  # path relative to /curtin, "/"-separated
    data: bytes
    mode: int  # st_mode with type bits (S_IFREG | 0o750, or S_IFDIR | 0o755)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def _file_mode(name: str, executable: bool) -> int:
    perm = 0o750 if name == HOOK or executable else 0o644
    return stat.S_IFREG | perm


def _read_dir(src: Path) -> list[HookFile]:
    out: list[HookFile] = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel = Path(dirpath).relative_to(src)
        for d in dirnames:
            out.append(HookFile((rel / d).as_posix(), b"", stat.S_IFDIR | 0o755))
        for f in sorted(filenames):
            p = Path(dirpath) / f
            if not p.is_file():
                continue
            name = (rel / f).as_posix()
            out.append(HookFile(name, p.read_bytes(), _file_mode(name, os.access(p, os.X_OK))))
    return out


def kernel_pin(cfg: Config, base: BaseDisk | None) -> str | None:
    """The kernel package the image keeps and curtin should install: --kernel, else the base's."""
    return cfg.provision.kernel or (base.kernel if base is not None else None)


def hook_files(cfg: Config, base: BaseDisk | None, existing: Collection[str]) -> list[HookFile]:
    """Files to add under /curtin, given the names ``existing`` already there on the disk."""
    files: list[HookFile] = []
    if cfg.output.curtin_hooks is not None:
        if not cfg.output.curtin_hooks.is_dir():
            raise ExportError(
                f"--curtin-hooks {cfg.output.curtin_hooks} is not a directory",
                hint="give the directory that holds curtin-hooks",
            )
        files = _read_dir(cfg.output.curtin_hooks)
    elif cfg.layout is not Layout.CLOUDIMG:
        files = installer_hook_files(cfg.output.packages)
    elif HOOK not in existing:
        builtin = BUILTIN_DIR / HOOK
        if not builtin.is_file():
            raise ExportError(
                f"the built-in curtin hook {builtin} is missing",
                hint="reinstall imagebuilder from its source tree, or pass --curtin-hooks DIR",
            )
        files = [HookFile(HOOK, builtin.read_bytes(), _file_mode(HOOK, True))]
    pin = kernel_pin(cfg, base)
    if pin and PIN not in existing and all(f.name != PIN for f in files):
        files.append(HookFile(PIN, f"{pin}\n".encode(), stat.S_IFREG | 0o644))
    return files


def custom_packages_archive(packages_dir: Path) -> bytes:
    """``--packages DIR``'s ``*.deb`` as a reproducible tar.gz (sorted, root-owned, mtime 0)."""
    if not packages_dir.is_dir():
        raise ConfigError(
            f"--packages {packages_dir} is not a directory", hint="give a directory of .deb files"
        )
    debs = sorted(p for p in packages_dir.glob("*.deb") if p.is_file())
    if not debs:
        raise ConfigError(f"--packages {packages_dir} has no .deb files", hint="add *.deb files")
    buf = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for deb in debs:
            info = tarfile.TarInfo(deb.name)
            info.size = deb.stat().st_size
            info.mode, info.uname, info.gname = 0o644, "root", "root"
            with open(deb, "rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


def installer_hook_files(packages_dir: Path | None = None) -> list[HookFile]:
    """/curtin for an installer-built image: the hooks of curtin_hooks/installer/, the debs."""
    files = [
        HookFile(p.name, p.read_bytes(), stat.S_IFREG | 0o750)
        for p in sorted(HOOKS_DIR.iterdir())
        if p.is_file()
    ]
    if packages_dir is not None:
        data = custom_packages_archive(packages_dir)
        files.append(HookFile(PACKAGES_ARCHIVE, data, stat.S_IFREG | 0o644))
    return files
