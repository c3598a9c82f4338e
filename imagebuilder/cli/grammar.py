"""The command line's grammar: every subcommand, option and help text.

Builds the argparse parsers ``cli`` uses; the build options come from the option
table (``options.OPTIONS``) so help, environment names and defaults never drift.
Parsing errors raise ConfigError (exit 2) instead of exiting. No printing besides
argparse's own ``--help``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..config import tree
from ..errors import ConfigError
from ..families import catalogue

PROG = "imagebuilder"
SUBCOMMANDS = (
    "releases", "fetch", "cache", "shell", "export", "inspect", "upload", "maas",
    "lock", "bundle", "diff", "test",
)  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so every usage error maps to exit 2."""

    def error(self, message: str) -> Any:
        raise ConfigError(message, hint=f"see '{self.prog} --help'")


def _fmt_default(opt: tree.Option) -> str:
    d = tree.default_of(opt)
    if opt.key in ("http_proxy", "https_proxy", "no_proxy"):
        return "from the environment"
    if d is None or d == () or d is False:
        return "unset" if not opt.flag else "off"
    return str(getattr(d, "value", d))


def _add_config_options(p: argparse.ArgumentParser) -> None:
    groups: dict[str, argparse._ArgumentGroup] = {}
    for opt in tree.OPTIONS:
        title = opt.section or "image"
        g = groups.get(title) or p.add_argument_group(f"{title} options")
        groups[title] = g
        names = [f"--{opt.name}"] + (["-o"] if opt.key == "output" else [])
        help_text = f"{opt.help} (default: {_fmt_default(opt)}; env {opt.env})"
        if opt.flag:
            g.add_argument(
                *names,
                dest=opt.key,
                action="store_const",
                const=True,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            g.add_argument(
                *names,
                dest=opt.key,
                default=argparse.SUPPRESS,
                metavar=opt.metavar or ("{" + ",".join(opt.choices) + "}" if opt.choices else None),
                help=help_text,
            )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML file with options ([source], [machine], [provision], [output] sections)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration as TOML and exit",
    )


def _add_lock_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--locked",
        action="store_true",
        help="refuse anything that resolves differently from the lock file",
    )
    p.add_argument(
        "--lock",
        type=Path,
        metavar="FILE",
        default=None,
        help="lock file to write or check (default: ./imagebuilder.lock)",
    )


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="show commands and guest output")
    p.add_argument("--json", action="store_true", help="progress as JSON lines on stdout")


def _add_maas_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    g = p.add_argument_group("MAAS options")
    g.add_argument(
        "--maas-url",
        required=required,
        metavar="URL",
        default=os.environ.get("MAAS_URL"),
        help="MAAS URL, e.g. http://maas:5240/MAAS (default: $MAAS_URL)",
    )
    g.add_argument(
        "--api-key-file",
        type=Path,
        metavar="FILE",
        help="file holding the MAAS API key (default: $MAAS_API_KEY, else a prompt)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Build MAAS-ready OS images: boot a cloud image (or a bootstrapped base) "
        "in qemu, customise it over SSH, and export a root tar.gz with curtin hooks.",
        epilog=f"Subcommands: {', '.join(SUBCOMMANDS)} ('{PROG} SUBCOMMAND --help'). "
        f"Known series: {', '.join(catalogue.names())}.",
    )
    p.add_argument("series", help="release to build, e.g. jammy or bookworm")
    _add_config_options(p)
    _add_common(p)
    _add_lock_options(p)
    p.add_argument(
        "--debug-shell",
        action="store_true",
        help="on a provisioning failure, open a shell on the build VM before cleanup",
    )
    p.add_argument(
        "--test",
        action="store_true",
        help="deploy the output with the real curtin under BIOS and UEFI and boot it "
        "(as 'imagebuilder test') before calling it done",
    )
    p.add_argument("--curtin", type=Path, metavar="DIR|TARBALL", help="curtin for --test")
    p.add_argument("--upload", action="store_true", help="upload the result to MAAS when built")
    p.add_argument("--name", metavar="custom/NAME", help="MAAS image name for --upload")
    p.add_argument("--title", help="MAAS image title for --upload")
    _add_maas_options(p, required=False)
    return p


def build_sub_parser(cmd: str) -> argparse.ArgumentParser:
    p = _Parser(prog=f"{PROG} {cmd}")
    if cmd == "releases":
        p.description = "List the series imagebuilder knows."
    elif cmd in ("fetch", "shell"):
        p.description = (
            "Fill the cache with the base for SERIES, without building."
            if cmd == "fetch"
            else "Boot the build VM for SERIES and open an interactive SSH shell."
        )
        p.add_argument("series")
        _add_config_options(p)
        _add_common(p)
        _add_lock_options(p)
    elif cmd == "lock":
        p.description = "Resolve SERIES's inputs now and write them to a lock file."
        p.add_argument("series")
        _add_config_options(p)
        _add_common(p)
        _add_lock_options(p)
    elif cmd == "bundle":
        p.description = (
            "create OUT.tar.zst: pack everything a locked build needs; "
            "import FILE: load a bundle into this host's cache for --offline builds."
        )
        p.add_argument("action", choices=["create", "import"])
        p.add_argument("file", type=Path, help="the bundle (.tar.zst) to write or read")
        p.add_argument("--level", type=int, default=None, help="zstd level for create")
        _add_config_options(p)
        _add_common(p)
        _add_lock_options(p)
    elif cmd == "diff":
        p.description = "List the files that differ between two outputs, and how."
        p.add_argument("a", type=Path)
        p.add_argument("b", type=Path)
    elif cmd == "cache":
        p.description = "Show or clean the download/base-disk cache."
        p.add_argument("action", choices=["list", "prune"])
        p.add_argument(
            "--all",
            action="store_true",
            help="prune: remove everything, not just partials and orphans",
        )
        p.add_argument(
            "--cache-dir",
            type=Path,
            default=None,
            help="cache directory (default: ~/.cache/imagebuilder)",
        )
    elif cmd == "export":
        p.description = (
            "Turn an existing disk image (qcow2, raw, vmdk, ...) into a MAAS-ready file."
        )
        p.add_argument("disk", type=Path)
        p.add_argument(
            "--series", default=None, help="release of the disk, for the manifest (default: jammy)"
        )
        _add_config_options(p)
        _add_common(p)
    elif cmd == "inspect":
        p.description = "Check an output the way a MAAS deploy would; exit 1 naming each problem."
        p.add_argument("image", type=Path)
        p.add_argument("--json", action="store_true", help="print facts and problems as JSON")
    elif cmd == "test":
        p.description = (
            "Deploy IMAGE as MAAS does, with the real curtin and no package source reachable, "
            "then boot the deployed disk: pass = cloud-init modules-final SUCCESS, a login "
            "prompt and an SSH login with the metadata's key."
        )
        p.add_argument("image", type=Path)
        p.add_argument("--firmware", choices=["bios", "uefi", "both"], default="both")
        p.add_argument(
            "--curtin",
            type=Path,
            metavar="DIR|TARBALL",
            help="curtin source tree or tarball (default: $IMAGEBUILDER_CURTIN, else the "
            "host's curtin package)",
        )
        p.add_argument("--cache-dir", type=Path, default=None, help="cache directory")
        _add_common(p)
    elif cmd == "upload":
        p.description = "Upload an image to MAAS (boot-resources create)."
        p.add_argument("image", type=Path)
        p.add_argument("--name", required=True, metavar="custom/NAME")
        p.add_argument("--title")
        p.add_argument("--architecture", metavar="ARCH/generic")
        p.add_argument("--base-image", metavar="OS/SERIES", help="e.g. ubuntu/jammy")
        p.add_argument("--filetype", help="MAAS filetype (default: from the manifest)")
        p.add_argument("--keep-old", action="store_true")
        _add_maas_options(p, required=True)
        _add_common(p)
    elif cmd == "maas":
        p.description = "List or delete uploaded images on a MAAS."
        p.add_argument("action", choices=["list", "delete"])
        p.add_argument("name", nargs="?")
        _add_maas_options(p, required=True)
        _add_common(p)
    return p
