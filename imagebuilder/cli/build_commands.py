"""The subcommands that make things: the build itself, ``fetch``, ``shell`` and ``export``.

The build (``imagebuilder SERIES``) runs the pipeline and, when asked, the deploy
test and the upload; ``fetch`` obtains only the base disk; ``shell`` boots the build
VM for a look inside; ``export`` turns a disk made elsewhere into an output.
``--print-config`` shows the merged config instead of building. Handlers print
their results and return an exit code; they never catch the library's errors
(``commands.main`` renders those).
"""

from __future__ import annotations

import argparse
import sys

from ..config import tree
from ..errors import ConfigError
from .exitcodes import EXIT_OK
from .from_args import config_for, lock_for, progress_for
from .maas_commands import deploy_test_output, upload_output


def cmd_build(ns: argparse.Namespace) -> int:
    cfg = config_for(ns)
    if ns.print_config:
        print(tree.to_toml(cfg), end="")
        return EXIT_OK
    if ns.upload and not ns.name:
        raise ConfigError("--upload needs --name custom/NAME", hint="e.g. --name custom/jammy-web")
    from ..pipeline import build

    progress = progress_for(ns)
    result = build(cfg, progress=progress, lock=lock_for(ns, cfg), debug_shell=ns.debug_shell)
    print(f"{result.output}  sha256 {result.sha256}  {result.size} bytes", file=sys.stderr)
    print(f"manifest: {result.manifest}", file=sys.stderr)
    if ns.test:
        deploy_test_output(ns, result.output, cfg.source.cache_dir, progress)
    if ns.upload:
        return upload_output(ns, result.output, progress)
    return EXIT_OK


def cmd_fetch(ns: argparse.Namespace) -> int:
    cfg = config_for(ns)
    if ns.print_config:
        print(tree.to_toml(cfg), end="")
        return EXIT_OK
    from ..pipeline import get_base

    progress = progress_for(ns)
    with progress.stage("base", f"{cfg.series} {cfg.arch} ({cfg.source.base.value})"):
        base = get_base(cfg, progress, lock=lock_for(ns, cfg))
    print(f"{base.path}  {base.format}  sha256 {base.sha256}")
    return EXIT_OK


def cmd_shell(ns: argparse.Namespace) -> int:
    cfg = config_for(ns)
    from ..pipeline import build_directory, get_base
    from ..vm.provision import shell

    progress = progress_for(ns)
    base = get_base(cfg, progress, lock=lock_for(ns, cfg))
    with build_directory(cfg) as build_dir:
        return shell(base, cfg, build_dir, progress)


def cmd_export(ns: argparse.Namespace) -> int:
    if not ns.disk.is_file():
        raise ConfigError(
            f"disk image {ns.disk} not found", hint="give the path of a qcow2/raw/vmdk disk"
        )
    cfg = config_for(ns, series=ns.series or "jammy")
    from ..export.recipe import export_disk

    progress = progress_for(ns)
    with progress.stage("export", f"{ns.disk.name} ({cfg.output.filetype.value})"):
        result = export_disk(ns.disk.resolve(), cfg, base=None, progress=progress)
    print(f"{result.path}  sha256 {result.sha256}  {result.size} bytes")
    return EXIT_OK
