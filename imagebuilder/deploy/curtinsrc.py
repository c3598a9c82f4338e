"""Where the deploy test's curtin comes from, packed for the deploy VM.

curtin is MAAS's installer and never part of this project: it is found, in this
order, at ``--curtin PATH`` (a source tree or a ``.tar.gz`` of one, e.g. ``git
archive --prefix=curtin/``), ``$IMAGEBUILDER_CURTIN``, or the host's Ubuntu
``curtin`` package (``/usr/lib/python3/dist-packages/curtin`` with
``/usr/lib/curtin/helpers``). :func:`find_curtin` checks the choice before any VM
starts and :func:`pack` writes one tarball laid out as a source tree (``curtin/bin``,
``curtin/curtin``, ``curtin/helpers``) for the deploy VM to unpack. This module
does not run curtin.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

ENV = "IMAGEBUILDER_CURTIN"
HOST_PACKAGE = Path("/usr/lib/python3/dist-packages/curtin")
HOST_HELPERS = Path("/usr/lib/curtin/helpers")
_VERSION = re.compile(r"""__version__\s*=\s*["']([^"']+)["']""")
_HINT = (
    "install Ubuntu's curtin package, or pass --curtin DIR|TARBALL (a curtin source tree, "
    f"e.g. git archive --prefix=curtin/ of github canonical/curtin), or set ${ENV}"
)


@dataclass(frozen=True)
class Curtin:
    """A curtin found on the host: a tarball, or a package dir (+ helpers dir)."""

    origin: str  # where it was found, for messages
    tarball: Path | None = None
    package: Path | None = None
    helpers: Path | None = None
    version: str = "unknown"


def _tar_version(path: Path) -> tuple[str, str]:
    """(member prefix before 'curtin/__init__.py', version) of a curtin source tarball."""
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name, member in members.items():
                prefix = name[: -len("curtin/__init__.py")]
                if not (name.endswith("curtin/__init__.py") and member.isfile()):
                    continue
                if prefix + "bin/curtin" not in members:
                    continue
                fh = tar.extractfile(member)
                found = _VERSION.search(fh.read().decode("utf-8", "replace") if fh else "")
                return prefix, found.group(1) if found else "unknown"
    except (OSError, tarfile.TarError) as exc:
        raise ConfigError(f"{path} is not a curtin source tarball ({exc})", hint=_HINT) from None
    raise ConfigError(f"{path} holds no curtin/__init__.py and bin/curtin", hint=_HINT)


def _dir_version(package: Path) -> str:
    try:
        found = _VERSION.search((package / "__init__.py").read_text())
    except OSError:
        return "unknown"
    return found.group(1) if found else "unknown"


def find_curtin(path: Path | None = None, *, environ: dict[str, str] | None = None) -> Curtin:
    """The curtin to deploy with; ConfigError naming the fix when there is none."""
    env = os.environ if environ is None else environ
    if path is None and env.get(ENV):
        path = Path(env[ENV])
    if path is not None:
        if path.is_file():
            _prefix, version = _tar_version(path)
            return Curtin(origin=str(path), tarball=path, version=version)
        if (path / "curtin" / "__init__.py").is_file() and (path / "bin" / "curtin").is_file():
            version = _dir_version(path / "curtin")
            return Curtin(origin=str(path), package=path / "curtin",
                          helpers=path / "helpers", version=version)  # fmt: skip
        if (path / "curtin" / "curtin" / "__init__.py").is_file():
            return find_curtin(path / "curtin", environ={})
        raise ConfigError(f"--curtin {path}: not a curtin source tree or tarball", hint=_HINT)
    if (HOST_PACKAGE / "__init__.py").is_file():
        return Curtin(origin="the host's curtin package", package=HOST_PACKAGE,
                      helpers=HOST_HELPERS, version=_dir_version(HOST_PACKAGE))  # fmt: skip
    raise ConfigError("no curtin found for the deploy test", hint=_HINT)


_LAUNCHER = b"""#!/bin/sh
# curtin launcher written by imagebuilder's deploy test
here=$(cd "${0%/*}/.." && pwd)
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec python3 -m curtin "$@"
"""


def pack(curtin: Curtin, dest: Path) -> Path:
    """Write ``dest``: a gzip tarball with ``curtin/{bin/curtin,curtin/,helpers/}``."""
    if curtin.tarball is not None:
        prefix, _version = _tar_version(curtin.tarball)
        with tarfile.open(curtin.tarball, "r:*") as src, tarfile.open(dest, "w:gz") as out:
            for member in src:
                if not member.name.startswith(prefix):
                    continue
                rel = member.name[len(prefix) :]
                if rel.split("/", 1)[0] not in ("bin", "curtin", "helpers"):
                    continue
                member.name = "curtin/" + rel
                out.addfile(member, src.extractfile(member) if member.isfile() else None)
        return dest
    assert curtin.package is not None
    with tarfile.open(dest, "w:gz") as out:
        out.add(curtin.package, "curtin/curtin",
                filter=lambda ti: None if "__pycache__" in ti.name else ti)  # fmt: skip
        if curtin.helpers is not None and curtin.helpers.is_dir():
            out.add(curtin.helpers, "curtin/helpers")
        info = tarfile.TarInfo("curtin/bin/curtin")
        info.size, info.mode = len(_LAUNCHER), 0o755
        out.addfile(info, io.BytesIO(_LAUNCHER))
    return dest
