"""Digests of a build's local inputs, as a lock records them.

:func:`current_inputs` is what a config's local inputs are right now: the seed
templates, the curtin hooks (built-in or ``--curtin-hooks``), the customize script
and ``--http-dir``, every file as its mode and sha256 (:func:`tree_digests`).
Resolving a lock and checking a config against one both start from it. It reads
local files only: no network, no cache, no printing, no comparing.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config.tree import Config
from ..resources import data_dir
from ..sources import cache
from .lockfile import Inputs

#: The curtin hooks shipped with imagebuilder (top-level ``curtin_hooks/``).
BUILTIN_HOOKS = data_dir("curtin_hooks")


def tree_digests(root: Path) -> dict[str, str]:
    """Every file under ``root``: relative path -> ``"<mode> <sha256>"`` or ``"link <target>"``."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if "__pycache__" in rel.parts or p.suffix == ".pyc":
            continue
        if p.is_symlink():
            out[rel.as_posix()] = f"link {os.readlink(p)}"
        elif p.is_file():
            mode = p.stat().st_mode & 0o7777
            out[rel.as_posix()] = f"{mode:o} {cache.hash_file(p)['sha256']}"
    return out


def current_inputs(cfg: Config) -> Inputs:
    from ..vm.seed import SEEDS_DIR

    hooks = cfg.output.curtin_hooks
    hooks_dir = hooks if hooks is not None else BUILTIN_HOOKS
    script = cfg.provision.customize
    http = cfg.provision.http_dir
    return Inputs(
        seeds=tree_digests(SEEDS_DIR),
        curtin_hooks=tree_digests(hooks_dir) if hooks_dir.is_dir() else {},
        curtin_hooks_source="built-in" if hooks is None else str(hooks),
        customize=cache.hash_file(script)["sha256"] if script is not None else None,
        customize_name=script.name if script is not None else None,
        http_dir=tree_digests(http) if http is not None else None,
    )
