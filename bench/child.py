"""Runs one imagebuilder step in its own process, so the bench can measure it alone.

``python -m bench.child RESULT.json export|build ARGS...``: calls imagebuilder's
public API (``export.export_disk``, ``pipeline.build``), then writes a JSON result
(output path and size, stage timings, and this process's own peak RSS) to
RESULT.json. Progress goes to stderr. It measures nothing else and never decides
what a result means.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from imagebuilder.errors import ImageBuilderError
from imagebuilder.progress import PlainRenderer, Progress

from .disks import base_from_json, bench_config


def self_peak_rss() -> int:
    """This process's peak RSS in bytes (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def do_export(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    from imagebuilder.export.recipe import export_disk

    cfg = bench_config(
        Path(args.cache_dir),
        compression=args.compression,
        filetype=args.filetype,
        output=args.output,
        **({"work_dir": args.work_dir} if args.work_dir else {}),
        **({"disk_backend": args.disk_backend} if args.disk_backend else {}),
    )
    base = base_from_json(args.base) if args.base else None
    start = time.monotonic()
    result = export_disk(Path(args.disk), cfg, base=base, progress=progress, output=args.output)
    try:
        backend = json.loads(result.manifest_path.read_text())["output"]["backend"]
    except (OSError, ValueError, KeyError, TypeError):
        backend = ""
    return {
        "backend": str(backend),
        "output": str(result.path),
        "size": result.size,
        "sha256": result.sha256,
        "seconds": time.monotonic() - start,
    }


def do_build(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    from imagebuilder.pipeline import build

    cfg = bench_config(
        Path(args.cache_dir),
        output=args.output,
        customize=args.customize,
        **({"work_dir": args.work_dir} if args.work_dir else {}),
    )
    start = time.monotonic()
    result = build(cfg, progress=progress)
    return {
        "output": str(result.output),
        "size": result.size,
        "sha256": result.sha256,
        "timings": [[name, secs] for name, secs in result.timings.items()],  # in order
        "seconds": time.monotonic() - start,
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.child")
    p.add_argument("result", type=Path)
    sub = p.add_subparsers(dest="step", required=True)
    e = sub.add_parser("export")
    e.add_argument("--disk", required=True)
    e.add_argument("--output", required=True)
    e.add_argument("--compression", default="default")
    e.add_argument("--filetype", default="tgz")
    e.add_argument("--base", default="", help="BaseDisk as JSON")
    e.add_argument("--cache-dir", required=True)
    e.add_argument("--work-dir", default="")
    e.add_argument("--disk-backend", default="", help="loop, fuse, guestfs (default: auto)")
    b = sub.add_parser("build")
    b.add_argument("--output", required=True)
    b.add_argument("--customize", required=True)
    b.add_argument("--cache-dir", required=True)
    b.add_argument("--work-dir", default="")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    progress = Progress(PlainRenderer(sys.stderr))
    try:
        data = do_export(args, progress) if args.step == "export" else do_build(args, progress)
    except ImageBuilderError as exc:
        hint = f" (hint: {exc.hint})" if exc.hint else ""
        print(f"{type(exc).__name__}: {exc.message}{hint}", file=sys.stderr)
        return 1
    data["python_rss"] = self_peak_rss()
    tmp = args.result.with_suffix(".partial")
    tmp.write_text(json.dumps(data, sort_keys=True))
    tmp.replace(args.result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
