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
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import releases
from .errors import ConfigError, UnknownSeriesError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class BaseKind(str, enum.Enum):
    CLOUD = "cloud"  # the distribution's cloud image, downloaded and verified
    BOOTSTRAP = "bootstrap"  # built from an apt mirror with mmdebstrap, no VM


class Layout(str, enum.Enum):
    CLOUDIMG = "cloudimg"
    FLAT = "flat"
    LVM = "lvm"


class Firmware(str, enum.Enum):
    UEFI = "uefi"
    BIOS = "bios"


class Accel(str, enum.Enum):
    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


class Compression(str, enum.Enum):
    FAST = "fast"
    DEFAULT = "default"
    BEST = "best"


class FileType(str, enum.Enum):
    TGZ = "tgz"
    TXZ = "txz"
    TBZ = "tbz"
    DDGZ = "ddgz"
    DDXZ = "ddxz"
    DDRAW = "ddraw"

    @property
    def is_raw(self) -> bool:
        return self.value.startswith("dd")


class DiskBackend(str, enum.Enum):
    AUTO = "auto"
    LOOP = "loop"
    FUSE = "fuse"
    GUESTFS = "guestfs"


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
    packages: tuple[str, ...] = ()


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
    def release(self) -> releases.Release:
        return releases.get(self.series)


# ---- the option table ---------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One configurable value: where it lives, how to parse it, how to explain it."""

    name: str  # CLI --name (dashes), env IMAGEBUILDER_NAME, TOML key (underscores)
    section: str  # "" for top level, else source|machine|provision|output
    parse: Callable[[Any], Any]
    help: str
    choices: tuple[str, ...] = ()
    flag: bool = False  # a boolean switch on the command line
    metavar: str | None = None

    @property
    def key(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return "IMAGEBUILDER_" + self.key.upper()

    def default(self) -> Any:
        holder: Any = Config() if not self.section else getattr(Config(), self.section)
        return getattr(holder, self.key)


_SIZE_RE = re.compile(r"^\d+(\.\d+)?[KMGT]?$", re.I)


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {v!r}")


def _opt_str(v: Any) -> str | None:
    return None if v in (None, "") else str(v)


def _opt_path(v: Any) -> Path | None:
    return None if v in (None, "") else Path(str(v)).expanduser()


def _pos_int(v: Any) -> int:
    n = int(v)
    if n <= 0:
        raise ValueError(f"must be a positive number, got {v!r}")
    return n


def _opt_float(v: Any) -> float | None:
    if v in (None, ""):
        return None
    f = float(v)
    if f <= 0:
        raise ValueError(f"must be positive, got {v!r}")
    return f


def _opt_int(v: Any) -> int | None:
    return None if v in (None, "") else int(v)


def _size(v: Any) -> str:
    s = str(v).strip()
    if not _SIZE_RE.match(s):
        raise ValueError(f"expected a size like 8G or 20480M, got {v!r}")
    return s.upper()


def _sha256(v: Any) -> str | None:
    if v in (None, ""):
        return None
    s = str(v).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", s):
        raise ValueError("expected 64 hex digits")
    return s


def _packages(v: Any) -> tuple[str, ...]:
    items = [str(x) for x in v] if isinstance(v, (list, tuple)) else re.split(r"[,\s]+", str(v))
    return tuple(x for x in items if x)


def _enum(cls: type[enum.Enum]) -> Callable[[Any], Any]:
    def parse(v: Any) -> Any:
        return cls(str(v).lower())

    return parse


def _choices(cls: type[enum.Enum]) -> tuple[str, ...]:
    return tuple(str(m.value) for m in cls)


OPTIONS: tuple[Option, ...] = (
    Option("arch", "", str, "target architecture", ("amd64", "arm64")),
    Option(
        "layout",
        "",
        _enum(Layout),
        "image layout: cloud image root tar, or an installer build (flat tar / LVM dd)",
        _choices(Layout),
    ),
    Option(
        "base",
        "source",
        _enum(BaseKind),
        "where the base disk comes from: the distribution's cloud image, "
        "or built from an apt mirror with mmdebstrap (no VM)",
        _choices(BaseKind),
    ),
    Option(
        "base-image",
        "source",
        _opt_str,
        "use this local file or URL as the base image instead of the catalogue's",
        metavar="PATH|URL",
    ),
    Option(
        "base-sha256",
        "source",
        _sha256,
        "expected sha256 of --base-image (required for URLs without a SHA256SUMS beside them)",
        metavar="HEX",
    ),
    Option(
        "serial",
        "source",
        _opt_str,
        "pin a cloud image build, e.g. 20240507 or release-20240507",
        metavar="SERIAL",
    ),
    Option(
        "released",
        "source",
        _bool,
        "use the released/ image tree instead of the daily current/",
        flag=True,
    ),
    Option(
        "mirror",
        "source",
        _opt_str,
        "replace the cloud-images host, or (with --base bootstrap) the apt mirror",
        metavar="URL",
    ),
    Option(
        "keyring",
        "source",
        _opt_path,
        "GPG keyring that signs SHA256SUMS (default: the distribution's, where installed)",
        metavar="FILE",
    ),
    Option(
        "require-signature",
        "source",
        _bool,
        "fail instead of warning when SHA256SUMS cannot be signature-checked",
        flag=True,
    ),
    Option("offline", "source", _bool, "use only the cache; never touch the network", flag=True),
    Option(
        "refresh",
        "source",
        _bool,
        "re-read the published checksums of a daily (current/) image instead of reusing the cache",
        flag=True,
    ),
    Option(
        "cache-dir",
        "source",
        lambda v: Path(str(v)).expanduser(),
        "where downloads and base disks are cached",
        metavar="DIR",
    ),
    Option(
        "packages",
        "source",
        _packages,
        "extra packages for --base bootstrap (comma separated)",
        metavar="PKG,...",
    ),
    Option(
        "firmware",
        "machine",
        _enum(Firmware),
        "build VM firmware: OVMF (UEFI) or SeaBIOS",
        _choices(Firmware),
    ),
    Option(
        "accel",
        "machine",
        _enum(Accel),
        "accelerator; auto tests that KVM really runs a guest and falls back to TCG",
        _choices(Accel),
    ),
    Option("memory", "machine", _pos_int, "build VM memory in MiB", metavar="MIB"),
    Option("cpus", "machine", _pos_int, "build VM vCPUs", metavar="N"),
    Option("disk-size", "machine", _size, "size of the build disk", metavar="SIZE"),
    Option(
        "timeout",
        "machine",
        _opt_float,
        "seconds to wait for the guest (default scales with the accelerator)",
        metavar="SECONDS",
    ),
    Option(
        "vnc",
        "machine",
        _bool,
        "show the VM's screen on a VNC display bound to 127.0.0.1",
        flag=True,
    ),
    Option("console", "machine", _bool, "copy the VM's serial console to the terminal", flag=True),
    Option(
        "customize",
        "provision",
        _opt_path,
        "script (any executable) run as root inside the VM",
        metavar="SCRIPT",
    ),
    Option(
        "http-dir",
        "provision",
        _opt_path,
        "directory served to the guest; its URL is in $IMAGEBUILDER_HTTP",
        metavar="DIR",
    ),
    Option(
        "kernel",
        "provision",
        _opt_str,
        "install this kernel package in the image and pin it for curtin (/curtin/CUSTOM_KERNEL)",
        metavar="PKG",
    ),
    Option(
        "http-proxy",
        "provision",
        _opt_str,
        "proxy for the guest during the build only (default: $http_proxy)",
        metavar="URL",
    ),
    Option(
        "https-proxy",
        "provision",
        _opt_str,
        "https proxy for the guest during the build only (default: $https_proxy)",
        metavar="URL",
    ),
    Option(
        "no-proxy",
        "provision",
        _opt_str,
        "hosts the guest reaches without proxy (default: $no_proxy)",
        metavar="HOSTS",
    ),
    Option(
        "output",
        "output",
        _opt_path,
        "output file (default: packer-maas's name, e.g. custom-cloudimg.tar.gz)",
        metavar="FILE",
    ),
    Option(
        "filetype", "output", _enum(FileType), "MAAS filetype of the output", _choices(FileType)
    ),
    Option(
        "compression", "output", _enum(Compression), "compression effort", _choices(Compression)
    ),
    Option(
        "curtin-hooks",
        "output",
        _opt_path,
        "ship this directory as /curtin instead of the built-in hooks",
        metavar="DIR",
    ),
    Option(
        "disk-backend",
        "output",
        _enum(DiskBackend),
        "how the finished disk is read: loop mount (root), nbdfuse+fuse2fs, or libguestfs",
        _choices(DiskBackend),
    ),
    Option(
        "source-date-epoch",
        "output",
        _opt_int,
        "clamp output mtimes to this time "
        "(default: $SOURCE_DATE_EPOCH, else the base image's date)",
        metavar="SECONDS",
    ),
    Option(
        "work-dir",
        "output",
        _opt_path,
        "where the build directory (overlay disk, logs) is made (default: a temp dir)",
        metavar="DIR",
    ),
    Option(
        "keep-disk", "output", _bool, "keep the build directory after a successful build", flag=True
    ),
)

_BY_KEY = {o.key: o for o in OPTIONS}


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
                opt = _BY_KEY.get(sk)
                if opt is None or opt.section != k:
                    errors.append(f"{path}: unknown key [{k}] {sk}")
                else:
                    flat[sk] = sv
        elif k == "series" or (k in _BY_KEY and _BY_KEY[k].section == ""):
            flat[k] = v
        else:
            errors.append(
                f"{path}: unknown key {k}"
                + (f" (it belongs in [{_BY_KEY[k].section}])" if k in _BY_KEY else "")
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
        opt = _BY_KEY[key]
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
            rel = releases.get(series)
            series = rel.codename
            arch = sections[""].get("arch", "amd64")
            if arch not in rel.arches:
                errors.append(f"{series} has no {arch} images (arches: {', '.join(rel.arches)})")
        except UnknownSeriesError as exc:
            if not errors:
                raise
            errors.append(exc.message)
    _check_paths(sections, errors)
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
