"""The lock file's contents and its TOML form (``imagebuilder.lock``).

:class:`Lock` holds what a build's inputs resolved to: the cloud image pin
(:class:`CloudPin`) or the bootstrap package set (:class:`BootstrapPin`), digests of
local inputs (:class:`Inputs`), the tool version. :func:`to_toml` writes it
canonically (the same lock always gives the same bytes, so :attr:`Lock.digest` is
stable and the manifest can record it); :func:`from_toml` reads it back and reports
a damaged file as a ConfigError. Pure data: no network, no cache, no printing;
``lock`` resolves, ``lock_check`` checks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LOCK_VERSION = 1
DEFAULT_LOCK = Path("imagebuilder.lock")


@dataclass(frozen=True)
class CloudPin:
    url: str  # as the cache records it; a path for a local --base-image
    name: str
    sha256: str
    size: int
    date: int
    serial: str | None
    verified: str


@dataclass(frozen=True)
class BootstrapPin:
    suite: str
    mirror: str
    sources: tuple[str, ...]
    keyring: str
    keyring_sha256: str
    requested: tuple[str, ...]  # what mmdebstrap is asked for (bootstrap.package_set)
    recipe_key: str
    resolved_from: str
    release_dates: dict[str, int]
    packages: dict[str, str]  # the closure mmdebstrap installs: name -> version


@dataclass(frozen=True)
class Inputs:
    seeds: dict[str, str]  # file -> "<mode> <sha256>" (or "link <target>")
    curtin_hooks: dict[str, str]
    curtin_hooks_source: str  # "built-in" or the --curtin-hooks path
    customize: str | None = None  # sha256 of the script
    customize_name: str | None = None
    http_dir: dict[str, str] | None = None


@dataclass(frozen=True)
class Lock:
    tool_version: str
    series: str
    arch: str
    base: str  # "cloud" | "bootstrap"
    options: dict[str, Any]
    inputs: Inputs
    cloud: CloudPin | None = None
    bootstrap: BootstrapPin | None = None
    lock_version: int = LOCK_VERSION
    path: Path | None = field(default=None, compare=False)

    @property
    def digest(self) -> str:
        """sha256 of the canonical TOML: what the manifest records."""
        return hashlib.sha256(to_toml(self).encode()).hexdigest()

    @property
    def where(self) -> str:
        return str(self.path) if self.path else "the lock"


# ---- TOML -------------------------------------------------------------------------------


def _q(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_q(x) for x in v) + "]"
    s = str(v)
    out = []
    for ch in s:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _table(name: str, values: Mapping[str, Any], *, quote_keys: bool = False) -> list[str]:
    lines = ["", f"[{name}]"]
    for k, v in values.items():
        if v is None:
            continue
        key = _q(k) if quote_keys else k
        if isinstance(v, (list, tuple)) and len(v) > 3:
            lines.append(f"{key} = [")
            lines.extend(f"    {_q(x)}," for x in v)
            lines.append("]")
        else:
            lines.append(f"{key} = {_q(v)}")
    return lines


def to_toml(lock: Lock) -> str:
    """The lock as canonical TOML (the same lock always gives the same bytes)."""
    lines = [
        "# imagebuilder.lock: every input of a build, pinned by 'imagebuilder lock'.",
        "# Build with --locked to refuse anything that resolves differently.",
        f"lock_version = {lock.lock_version}",
        f"tool_version = {_q(lock.tool_version)}",
        f"series = {_q(lock.series)}",
        f"arch = {_q(lock.arch)}",
        f"base = {_q(lock.base)}",
    ]
    lines += _table("options", dict(sorted(lock.options.items())))
    if lock.cloud is not None:
        lines += _table("cloud", dataclasses.asdict(lock.cloud))
    if lock.bootstrap is not None:
        b = dataclasses.asdict(lock.bootstrap)
        dates, pkgs = b.pop("release_dates"), b.pop("packages")
        lines += _table("bootstrap", b)
        lines += _table("bootstrap.release_dates", dict(sorted(dates.items())), quote_keys=True)
        lines += _table("bootstrap.packages", dict(sorted(pkgs.items())), quote_keys=True)
    i = lock.inputs
    top = {"curtin_hooks_source": i.curtin_hooks_source, "customize": i.customize}
    lines += _table("inputs", {**top, "customize_name": i.customize_name})
    for name, tree in (
        ("seeds", i.seeds),
        ("curtin_hooks", i.curtin_hooks),
        ("http_dir", i.http_dir),
    ):
        if tree is not None:
            lines += _table(f"inputs.{name}", dict(sorted(tree.items())), quote_keys=True)
    return "\n".join(lines) + "\n"


def _bad(path: Path | None, what: str) -> ConfigError:
    return ConfigError(
        f"lock file {path or ''}: {what}".replace(" :", ":"),
        hint="write it again with 'imagebuilder lock SERIES [options]'",
    )


def from_toml(text: str, path: Path | None = None) -> Lock:
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _bad(path, f"not valid TOML ({exc})") from None
    if d.get("lock_version") != LOCK_VERSION:
        raise _bad(
            path, f"lock_version {d.get('lock_version')!r}, this imagebuilder reads {LOCK_VERSION}"
        )
    try:
        inp = dict(d["inputs"])
        inputs = Inputs(
            seeds=dict(inp.pop("seeds")),
            curtin_hooks=dict(inp.pop("curtin_hooks")),
            http_dir=dict(inp["http_dir"]) if "http_dir" in inp else None,
            curtin_hooks_source=str(inp["curtin_hooks_source"]),
            customize=inp.get("customize"),
            customize_name=inp.get("customize_name"),
        )
        cloud = CloudPin(**{"serial": None, **d["cloud"]}) if "cloud" in d else None
        boot = None
        if "bootstrap" in d:
            b = dict(d["bootstrap"])
            for key in ("sources", "requested"):
                b[key] = tuple(b[key])
            boot = BootstrapPin(**b)
        lock = Lock(
            str(d["tool_version"]),
            str(d["series"]),
            str(d["arch"]),
            str(d["base"]),
            dict(d.get("options", {})),
            inputs,
            cloud,
            boot,
            path=path,
        )
    except (KeyError, TypeError) as exc:
        raise _bad(path, f"missing or malformed entry {exc}") from None
    if (lock.base == "cloud") != (cloud is not None) or (lock.base == "bootstrap") != bool(boot):
        raise _bad(path, f"base {lock.base!r} without its [{lock.base}] table")
    return lock


def read_lock(path: Path) -> Lock:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"lock file {path} not found",
            hint="make one with 'imagebuilder lock SERIES [options]', or pass --lock FILE",
        ) from None
    return from_toml(text, path)


def write_lock(lock: Lock, path: Path) -> Path:
    """Write ``lock`` to ``path`` atomically; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_text(to_toml(lock))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
