"""Benchmark 4: dd.gz of an 8 GiB mostly-empty disk against ``gzip -c`` and ``pigz``.

The disk is made for the bench (:func:`bench.disks.make_disk`): a GPT, partition 1 an
ext4 filesystem holding a copy of a host directory (``/usr/share/doc`` by default),
the rest holes. imagebuilder's ``ddgz`` export reads it through its own machinery
(holes skipped by block status); the references compress every byte of the raw file.
Each contender gets its own scratch directory. This module does not print.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from imagebuilder import run

from . import disks
from .common import missing, run_child
from .harness import MB, Context, Ratio, Row, Sample, measure, ratio, run_row

BENCH = "raw"
DISK_SIZE = 8 * disks.GIB
PART_SIZE = 1 * disks.GIB
POPULATE = Path("/usr/share/doc")
OUTPUT_NAME = "custom-raw.dd.gz"


def compressor_argv(tool: str, disk: Path) -> list[str]:
    """``gzip -c DISK`` / ``pigz -c DISK`` (default level 6, as the issue states them)."""
    return [tool, "-c", str(disk)]


@contextlib.contextmanager
def _output(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        yield fd
    finally:
        os.close(fd)


def reference(ctx: Context, tool: str, disk: Path) -> Row:
    row = Row(BENCH, f"{tool} -c (level 6)")

    def once(i: int) -> Sample:
        work = ctx.dir("runs", tool)
        out = work / OUTPUT_NAME

        def step() -> Path:
            with _output(out) as fd:
                run.run(compressor_argv(tool, disk), stdout=fd)
            return out

        return measure(step, scratch=work)

    return run_row(row, once, ctx)


def ours(ctx: Context, level: str, disk: Path) -> Row:
    row = Row(BENCH, f"imagebuilder ddgz --compression {level}")
    why = missing("imagebuilder.export.recipe", "export_disk")
    if why:
        row.status = f"skipped: {why}"
        return row

    def once(i: int) -> Sample:
        work = ctx.dir("runs", f"ours-{level}")
        (work / "tmp").mkdir()
        out = work / OUTPUT_NAME
        args = ["--disk", str(disk), "--output", str(out), "--compression", level,
                "--filetype", "ddgz", "--cache-dir", str(ctx.scratch / "cache"),
                "--work-dir", str(work / "tmp")]  # fmt: skip
        sample, _ = run_child(
            ctx.scratch / "child-result.json", "export", args, scratch=work, tmp=work / "tmp"
        )
        return sample

    return run_row(row, once, ctx)


def bench_raw(ctx: Context) -> tuple[list[Row], list[Ratio]]:
    disk = ctx.scratch / "disk-8g.raw"
    ctx.log(f"raw: making an {DISK_SIZE // disks.GIB} GiB disk with {POPULATE} in partition 1")
    disks.make_disk(disk, size=DISK_SIZE, part_size=PART_SIZE, populate=POPULATE)
    used = disk.stat().st_blocks * 512
    ctx.log(f"raw: {used / MB:.0f} MB allocated of {DISK_SIZE / MB:.0f} MB")
    disks.warm_cache(disk)
    levels = [lv for lv in ctx.levels if lv == "default"] or list(ctx.levels[:1])
    rows = {f"ours-{lv}": ours(ctx, lv, disk) for lv in levels}
    rows["gzip"] = reference(ctx, "gzip", disk)
    rows["pigz"] = reference(ctx, "pigz", disk)
    out: list[Ratio] = []
    for lv in levels:
        mine = rows[f"ours-{lv}"]
        for ref in ("gzip", "pigz"):
            other = rows[ref]
            out.append(Ratio(BENCH, f"ddgz {lv}: speed-up vs {ref} -c",
                             ratio(other.median("wall"), mine.median("wall"))))  # fmt: skip
            size = ratio(mine.median("output_size"), other.median("output_size"))
            out.append(Ratio(BENCH, f"ddgz {lv}: size vs {ref} -c", size))
    for row in rows.values():
        row.note = row.note or f"{used / MB:.0f} MB allocated of {DISK_SIZE // disks.GIB} GiB"
    disk.unlink(missing_ok=True)
    return list(rows.values()), out
