"""``python -m bench [export|boot|build|raw ...]`` (``make bench``): run, print, save.

Runs the chosen benchmarks (all by default) one after another in a private scratch
directory, prints the table of medians and ratios with the host's cores and
accelerator, and writes the same as JSON to ``bench/results/<timestamp>.json``.
A benchmark whose imagebuilder module is not there yet is skipped with its reason.
This is the only bench module that prints.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .harness import Context, Ratio, Row, become_subreaper
from .report import format_markdown, format_table, host_info, write_json

Bench = Callable[[Context], tuple[list[Row], list[Ratio]]]


def _export(ctx: Context) -> tuple[list[Row], list[Ratio]]:
    from .exports import bench_export

    return bench_export(ctx)


def _boot(ctx: Context) -> tuple[list[Row], list[Ratio]]:
    from .boot import bench_boot

    return bench_boot(ctx)


def _build(ctx: Context) -> tuple[list[Row], list[Ratio]]:
    from .build import bench_build

    return bench_build(ctx)


def _raw(ctx: Context) -> tuple[list[Row], list[Ratio]]:
    from .raw import bench_raw

    return bench_raw(ctx)


def _deploy(ctx: Context) -> tuple[list[Row], list[Ratio]]:
    from .deploy import bench_deploy

    return bench_deploy(ctx)


BENCHES: dict[str, Bench] = {
    "export": _export, "boot": _boot, "build": _build, "raw": _raw, "deploy": _deploy,
}  # fmt: skip


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench", description="measure imagebuilder against the reference tools"
    )
    p.add_argument("benches", nargs="*", metavar="BENCH",
                   help=f"which benchmarks ({', '.join(BENCHES)}); default: all")  # fmt: skip
    p.add_argument("--runs", type=int, default=3, help="runs of anything under 60 s (3)")
    p.add_argument("--disk", type=Path, help="export this disk instead of the bootstrap base")
    p.add_argument("--levels", default="fast,default,best",
                   help="imagebuilder's export compression levels (fast,default,best)")  # fmt: skip
    p.add_argument("--fuse-row", action="store_true",
                   help="export: also time imagebuilder with --disk-backend fuse")  # fmt: skip
    p.add_argument("--scratch", type=Path, help="parent of the scratch directory ($TMPDIR)")
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    p.add_argument("--markdown", type=Path, help="also write the tables as Markdown to this file")
    return p


def log(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    names = args.benches or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        p.error(f"unknown benchmark {', '.join(unknown)}: choose from {', '.join(BENCHES)}")
    become_subreaper()
    signal.signal(signal.SIGTERM, _interrupt)  # clean up (VMs, mounts, scratch) on kill too
    from .boot import accelerator

    accel = accelerator()
    host = host_info(accel)
    scratch = Path(tempfile.mkdtemp(prefix="imagebuilder-bench-", dir=args.scratch))
    ctx = Context(
        scratch=scratch,
        runs=max(1, args.runs),
        log=log,
        disk=args.disk,
        levels=tuple(x for x in args.levels.split(",") if x),
        fuse_row=args.fuse_row,
    )
    rows: list[Row] = []
    ratios: list[Ratio] = []
    start = time.monotonic()
    log(f"benchmarks: {', '.join(names)}; scratch {scratch}; accelerator {accel}")
    try:
        for name in names:
            t0 = time.monotonic()
            log(f"== {name}")
            r, q = BENCHES[name](ctx)
            rows += r
            ratios += q
            log(f"== {name} done in {time.monotonic() - t0:.0f} s")
    except KeyboardInterrupt:
        log("interrupted: reporting what finished")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    host["total_seconds"] = round(time.monotonic() - start, 1)
    print(format_table(rows, ratios, host), end="")
    print(f"total: {host['total_seconds']:.0f} s")
    if not args.no_json:
        print(f"results: {write_json(rows, ratios, host, argv)}")
    if args.markdown:
        command = " ".join(["python", "-m", "bench", *argv])
        args.markdown.write_text(format_markdown(rows, ratios, host, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
