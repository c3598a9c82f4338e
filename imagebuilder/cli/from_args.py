"""What a subcommand's parsed arguments turn into: its config, progress display and lock.

:func:`config_for` merges the options given on the command line over the config
file and the defaults; :func:`progress_for` picks JSON events on stdout (``--json``),
the live display on a terminal, or plain lines on stderr; :func:`lock_for` reads the
lock a ``--locked`` run must follow. Every handler starts here. This module runs no
subcommand, prints nothing and decides no exit code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..config import tree
from ..errors import ConfigError
from ..progress import JSONRenderer, PlainRenderer, Progress, TTYRenderer


def progress_for(ns: argparse.Namespace) -> Progress:
    verbose = bool(getattr(ns, "verbose", False))
    if getattr(ns, "json", False):
        return Progress(JSONRenderer(sys.stdout))
    if sys.stderr.isatty():
        return Progress(TTYRenderer(sys.stderr, verbose=verbose))
    return Progress(PlainRenderer(sys.stderr, verbose=verbose))


def config_for(ns: argparse.Namespace, **extra: Any) -> tree.Config:
    cli = {o.key: getattr(ns, o.key) for o in tree.OPTIONS if hasattr(ns, o.key)}
    cli.update(extra)
    if getattr(ns, "series", None) is not None:
        cli["series"] = ns.series
    return tree.resolve(cli, config_file=getattr(ns, "config", None))


def lock_path(ns: argparse.Namespace) -> Path:
    from ..repro.lockfile import DEFAULT_LOCK

    return Path(ns.lock or DEFAULT_LOCK)


def lock_for(ns: argparse.Namespace, cfg: tree.Config) -> Any:
    """The lock to enforce (``--locked``), or None."""
    if not getattr(ns, "locked", False):
        return None
    from ..repro.lock import read_lock

    path = lock_path(ns)
    if not path.is_file():
        raise ConfigError(
            f"--locked but there is no lock file {path}",
            hint=f"write one with 'imagebuilder lock {cfg.series} ...' or pass --lock FILE",
        )
    return read_lock(path)
