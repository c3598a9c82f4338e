"""Build configuration: one frozen dataclass tree, merged once from its layers.

Layers, strongest first: command line > environment (``IMAGEBUILDER_<OPTION>``)
> TOML file (``--config FILE``) > defaults. One table, :data:`OPTIONS`, describes
every option once; ``cli`` builds argparse from it, :func:`resolve` merges and
validates (reporting every error at once), and :func:`to_toml`/:func:`to_dict`
render the resolved config (``--print-config``, the manifest). No I/O besides
reading the TOML file; no printing.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UnknownSeriesError
from ..families import catalogue
from ..families.seam import Release
from .choices import Accel, BaseKind, Compression, DiskBackend, FileType, Firmware, Layout
from .options import BY_KEY, OPTIONS, Option

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "imagebuilder"


@dataclass(frozen=True)
class SourceConfig:
    base: BaseKind = BaseKind.CLOUD
    base_image: str | None = None
    base_sha256: str | None = None
    serial: str | None = None
    released: bool = False
    mirror: str | None = None
    keyring: Path | None = None
    require_signature: bool = False
    offline: bool = False
    refresh: bool = False
    cache_dir: Path = field(default_factory=default_cache_dir)
    extra_packages: tuple[str, ...] = ()
    iso: Path | None = None


@dataclass(frozen=True)
class MachineConfig:
    firmware: Firmware = Firmware.UEFI
    accel: Accel = Accel.AUTO
    memory: int = 2048
    cpus: int = 2
    disk_size: str = "8G"
    timeout: float | None = None
    vnc: bool = False
    console: bool = False


@dataclass(frozen=True)
class ProvisionConfig:
    customize: Path | None = None
    http_dir: Path | None = None
    kernel: str | None = None
    http_proxy: str | None = None
    https_proxy: str | None = None
    no_proxy: str | None = None


@dataclass(frozen=True)
class OutputConfig:
    output: Path | None = None
    filetype: FileType = FileType.TGZ
    compression: Compression = Compression.DEFAULT
    curtin_hooks: Path | None = None
    packages: Path | None = None
    disk_backend: DiskBackend = DiskBackend.AUTO
    source_date_epoch: int | None = None
    work_dir: Path | None = None
    keep_disk: bool = False


@dataclass(frozen=True)
class Config:
    series: str = "jammy"
    arch: str = "amd64"
    layout: Layout = Layout.CLOUDIMG
    source: SourceConfig = field(default_factory=SourceConfig)
    machine: MachineConfig = field(default_factory=MachineConfig)
    provision: ProvisionConfig = field(default_factory=ProvisionConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @property
    def release(self) -> Release:
        return catalogue.get(self.series)


def default_of(opt: Option) -> Any:
    """The value ``opt`` has when no layer sets it (the dataclass default)."""
    holder: Any = Config() if not opt.section else getattr(Config(), opt.section)
    return getattr(holder, opt.key)


def load_toml(path: Path) -> dict[str, Any]:
    """Read a config file into {key: value}, flattening sections."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found", hint="check --config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}", hint="fix the TOML syntax") from None
    flat: dict[str, Any] = {}
    errors: list[str] = []
    for k, v in data.items():
        if isinstance(v, dict):
            for sk, sv in v.items():
                opt = BY_KEY.get(sk)
                if opt is None or opt.section != k:
                    errors.append(f"{path}: unknown key [{k}] {sk}")
                else:
                    flat[sk] = sv
        elif k == "series" or (k in BY_KEY and BY_KEY[k].section == ""):
            flat[k] = v
        else:
            errors.append(
                f"{path}: unknown key {k}"
                + (f" (it belongs in [{BY_KEY[k].section}])" if k in BY_KEY else "")
            )
    if errors:
        raise ConfigError("; ".join(errors), hint="see 'imagebuilder --help' for the option names")
    return flat


def env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for opt in OPTIONS:
        if opt.env in environ:
            out[opt.key] = environ[opt.env]
    if "IMAGEBUILDER_SERIES" in environ:
        out["series"] = environ["IMAGEBUILDER_SERIES"]
    return out


def resolve(
    cli: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Config:
    """Merge the layers once and validate everything, reporting all errors together."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    if config_file is not None:
        raw.update(load_toml(config_file))
    raw.update(env_layer(environ))
    raw.update({k: v for k, v in cli.items() if v is not None})
    # Proxies default to the host's usual variables.
    for key in ("http_proxy", "https_proxy", "no_proxy"):
        if key not in raw:
            val = environ.get(key) or environ.get(key.upper())
            if val:
                raw[key] = val
    if "source_date_epoch" not in raw and environ.get("SOURCE_DATE_EPOCH"):
        raw["source_date_epoch"] = environ["SOURCE_DATE_EPOCH"]

    errors: list[str] = []
    sections: dict[str, dict[str, Any]] = {
        "": {},
        "source": {},
        "machine": {},
        "provision": {},
        "output": {},
    }
    for key, value in raw.items():
        if key == "series":
            continue
        opt = BY_KEY[key]
        try:
            parsed = opt.parse(value)
        except (ValueError, TypeError) as exc:
            msg = str(exc)
            if opt.choices:
                msg = f"expected one of {', '.join(opt.choices)}, got {value!r}"
            errors.append(f"--{opt.name}: {msg}")
            continue
        if opt.choices and str(getattr(parsed, "value", parsed)) not in opt.choices:
            errors.append(f"--{opt.name}: expected one of {', '.join(opt.choices)}, got {value!r}")
            continue
        sections[opt.section][key] = parsed

    series = str(raw.get("series") or "")
    if not series:
        errors.append("no series given: name one, e.g. 'imagebuilder jammy'")
    else:
        try:
            rel = catalogue.get(series)
            series = rel.codename
            arch = sections[""].get("arch", "amd64")
            if arch not in rel.arches:
                errors.append(f"{series} has no {arch} images (arches: {', '.join(rel.arches)})")
        except UnknownSeriesError as exc:
            if not errors:
                raise
            errors.append(exc.message)
    _check_paths(sections, errors)
    _check_layout(sections, errors, explicit_filetype="filetype" in raw)
    if errors:
        raise ConfigError(
            "; ".join(errors)
            if len(errors) == 1
            else f"{len(errors)} errors: " + "; ".join(errors),
            hint="see 'imagebuilder --help'",
        )
    return Config(
        series=series,
        source=SourceConfig(**sections["source"]),
        machine=MachineConfig(**sections["machine"]),
        provision=ProvisionConfig(**sections["provision"]),
        output=OutputConfig(**sections["output"]),
        **sections[""],
    )


def _check_paths(sections: dict[str, dict[str, Any]], errors: list[str]) -> None:
    prov, out = sections["provision"], sections["output"]
    script = prov.get("customize")
    if script is not None:
        if not script.is_file():
            errors.append(f"--customize: {script} does not exist or is not a file")
        elif not os.access(script, os.R_OK):
            errors.append(f"--customize: {script} is not readable")
    for key, section in (("http_dir", prov), ("curtin_hooks", out)):
        p = section.get(key)
        if p is not None and not p.is_dir():
            errors.append(f"--{key.replace('_', '-')}: {p} is not a directory")
    kr = sections["source"].get("keyring")
    if kr is not None and not kr.is_file():
        errors.append(f"--keyring: {kr} does not exist")
    iso = sections["source"].get("iso")
    if iso is not None and not iso.is_file():
        errors.append(f"--iso: {iso} does not exist or is not a file")
    pkgs = out.get("packages")
    if pkgs is not None and not (pkgs.is_dir() and any(pkgs.glob("*.deb"))):
        errors.append(f"--packages: {pkgs} is not a directory holding *.deb files")


#: Whole-disk outputs: what an LVM layout must be exported as.
DD_TYPES = (FileType.DDGZ, FileType.DDXZ, FileType.DDRAW)


def _check_layout(
    sections: dict[str, dict[str, Any]], errors: list[str], *, explicit_filetype: bool
) -> None:
    """Installer layouts: LVM is a whole-disk image (dd.gz unless told otherwise)."""
    layout = sections[""].get("layout", Layout.CLOUDIMG)
    out = sections["output"]
    if layout is Layout.LVM:
        if not explicit_filetype:
            out["filetype"] = FileType.DDGZ
        elif out.get("filetype") not in DD_TYPES:
            errors.append("--layout lvm makes a whole-disk image: use --filetype ddgz, ddxz or dd")
    if layout is Layout.CLOUDIMG:
        if out.get("packages") is not None:
            errors.append("--packages is for installer builds: add --layout flat or lvm")
        if sections["source"].get("iso") is not None:
            errors.append("--iso is for installer builds: add --layout flat or lvm")


# ---- rendering ------------------------------------------------------------------


def _plain(v: Any) -> Any:
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


def to_dict(cfg: Config) -> dict[str, Any]:
    """JSON-ready dict: top-level keys plus one dict per section."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out[f.name] = {sf.name: _plain(getattr(v, sf.name)) for sf in dataclasses.fields(v)}
        else:
            out[f.name] = _plain(v)
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def to_toml(cfg: Config) -> str:
    """The resolved config as TOML that ``--config`` reads back (None values are comments)."""
    d = to_dict(cfg)
    lines: list[str] = []
    for k, v in d.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            for sk, sv in v.items():
                if sv is None:
                    lines.append(f"# {sk} = (unset)")
                else:
                    lines.append(f"{sk} = {_toml_value(sv)}")
    return "\n".join(lines) + "\n"


def from_dict(data: Mapping[str, Any]) -> Config:
    """Rebuild a Config from :func:`to_dict` output (manifest round-trip)."""
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            flat.update({sk: sv for sk, sv in v.items() if sv is not None})
        else:
            flat[k] = v
    series = flat.pop("series", None)
    return resolve({"series": series, **flat}, environ={})


__all__ = [
    "OPTIONS",
    "Accel",
    "BaseKind",
    "Compression",
    "Config",
    "DiskBackend",
    "FileType",
    "Firmware",
    "Layout",
    "MachineConfig",
    "Option",
    "OutputConfig",
    "ProvisionConfig",
    "SourceConfig",
    "default_cache_dir",
    "from_dict",
    "resolve",
    "to_dict",
    "to_toml",
]
