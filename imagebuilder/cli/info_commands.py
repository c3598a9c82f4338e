"""The subcommands that report on what is here: ``releases``, ``cache list|prune`` and
``inspect``.

``releases`` prints the catalogue with each release's status today; ``cache`` lists
the cache or frees space in it; ``inspect`` checks an output the way a MAAS deploy
would and fails when it would not deploy. None of them builds, boots or uses the
network. Handlers print their results and return an exit code; they never catch
the library's errors (``commands.main`` renders those).
"""

from __future__ import annotations

import argparse
import datetime as _dt

from ..config import tree
from ..errors import ConfigError
from ..families import catalogue
from .exitcodes import EXIT_FAILED, EXIT_OK


def cmd_releases(ns: argparse.Namespace) -> int:
    today = _dt.date.today()
    rows = [("DISTRO", "VERSION", "CODENAME", "STATUS", "ARCHES")]
    for r in catalogue.RELEASES:
        rows.append(
            (
                r.distro,
                r.display_version(),
                r.codename,
                r.status(today),
                ",".join(r.arches),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def cmd_cache(ns: argparse.Namespace) -> int:
    from ..sources.cache_list import list_cache
    from ..sources.cache_prune import prune_cache

    root = ns.cache_dir or tree.default_cache_dir()
    if ns.action == "list":
        entries = list_cache(root)
        if not entries:
            print(f"cache {root} is empty")
        for e in entries:
            print(f"{e.kind:<10} {e.size / 2**20:9.1f} MiB  {e.name}")
        return EXIT_OK
    freed = prune_cache(root, keep_latest=not ns.all)
    print(f"freed {freed / 2**20:.1f} MiB in {root}")
    return EXIT_OK


def cmd_inspect(ns: argparse.Namespace) -> int:
    import json

    from ..export.outputlint import inspect_image

    if not ns.image.is_file():
        raise ConfigError(f"image {ns.image} not found", hint="give the path of a built output")
    report = inspect_image(ns.image)
    if ns.json:
        print(
            json.dumps({"facts": report.facts, "problems": report.problems}, indent=2, default=str)
        )
    else:
        for k, v in report.facts.items():
            print(f"{k:<24} {v}")
        for prob in report.problems:
            print(f"PROBLEM: {prob}")
        print(
            "OK: deployable by MAAS"
            if not report.problems
            else f"{len(report.problems)} problem(s)"
        )
    return EXIT_FAILED if report.problems else EXIT_OK
