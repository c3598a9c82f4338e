"""The subcommands of reproducible and air-gapped builds: ``lock``, ``bundle create|import``
and ``diff``.

``lock`` pins every input of a config into a lock file; ``bundle create`` packs what
a locked build needs into one archive and ``bundle import`` installs one into the
cache of an offline host; ``diff`` says what differs between two outputs. Handlers
print their results and return an exit code; they never catch the library's errors
(``commands.main`` renders those).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import tree
from ..errors import ConfigError
from .exitcodes import EXIT_FAILED, EXIT_OK
from .from_args import config_for, lock_path, progress_for


def cmd_lock(ns: argparse.Namespace) -> int:
    from ..repro.lock import resolve_lock, write_lock

    cfg = config_for(ns)
    progress = progress_for(ns)
    with progress.stage("lock", f"{cfg.series} {cfg.arch} ({cfg.source.base.value})"):
        lk = resolve_lock(cfg, progress)
        path = write_lock(lk, lock_path(ns))
    print(f"{path}  digest {lk.digest}")
    return EXIT_OK


def cmd_bundle(ns: argparse.Namespace) -> int:
    progress = progress_for(ns)
    if ns.action == "import":
        from ..repro.bundle_import import import_bundle

        cache = getattr(ns, "cache_dir", None)
        res = import_bundle(
            ns.file,
            Path(cache) if cache else tree.default_cache_dir(),
            progress=progress,
            keyring=Path(ns.keyring) if getattr(ns, "keyring", None) else None,
        )
        for item in res.installed:
            print(f"imported {item}")
        extra = "".join(
            f" --{flag} {path}"
            for flag, path in (
                ("base-image", res.base_image),
                ("customize", res.customize),
                ("curtin-hooks", res.curtin_hooks),
                ("http-dir", res.http_dir),
            )
            if path is not None
        )
        print(
            f"build with: imagebuilder {res.lock.series} --offline --locked "
            f"--lock {res.lock_path}{extra}"
        )
        return EXIT_OK
    from ..repro.bundle_create import create_bundle
    from ..repro.lock import config_from_lock, read_lock

    lk = read_lock(lock_path(ns))
    values = {o.key: getattr(ns, o.key) for o in tree.OPTIONS if hasattr(ns, o.key)}
    cfg = config_from_lock(lk, values)
    kwargs = {"level": ns.level} if ns.level is not None else {}
    info = create_bundle(cfg, lk, ns.file, progress=progress, **kwargs)
    print(f"{info.path}  sha256 {info.sha256}  {info.size} bytes")
    return EXIT_OK


def cmd_diff(ns: argparse.Namespace) -> int:
    from ..repro.diff_outputs import diff_outputs, render

    for path in (ns.a, ns.b):
        if not path.is_file():
            raise ConfigError(f"{path} not found", hint="give two built outputs to compare")
    diffs = diff_outputs(ns.a, ns.b)
    if diffs:
        print(render(diffs).rstrip("\n"))
    return EXIT_FAILED if diffs else EXIT_OK
