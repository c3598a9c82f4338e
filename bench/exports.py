"""Benchmark 1: the tgz export against packer-maas's post-processor and virt-tar-out.

Every contender reads its own fresh qcow2 overlay of the same disk (made outside the
timing; the page cache is warmed first), writes into its own scratch directory, and
is measured for wall time, output size, peak scratch disk and peak RSS. imagebuilder
runs in a child process (``bench.child``) at each ``--compression`` level; its own
peak RSS is reported as ``python_rss``. This module decides which ratios are
computed and their targets (issue 4); it does not print (``ctx.log`` does).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from imagebuilder.sources.basedisk import BaseDisk

from . import disks, reference
from .common import missing, run_child
from .harness import MB, Context, Ratio, Row, Sample, measure, ratio, run_row

BENCH = "export"
OUTPUT_NAME = "custom-cloudimg.tar.gz"

#: (level, speed-up target vs packer-maas, size-ratio target vs packer-maas)
TARGETS = {"default": (5.0, 1.12), "best": (2.0, 1.01)}
PYTHON_RSS_LIMIT_MB = 300


def the_disk(ctx: Context) -> tuple[Path, str, BaseDisk | None]:
    """The disk to export: ``--disk``, else the bootstrap base (found or built)."""
    if ctx.disk is not None:
        with ctx.disk.open("rb") as f:
            fmt = "qcow2" if f.read(4) == b"QFI\xfb" else "raw"
        return ctx.disk, fmt, None
    from imagebuilder.progress import Progress

    base = disks.bench_base(Progress())
    return base.path, base.format, base


def ours(
    ctx: Context,
    level: str,
    disk: Path,
    fmt: str,
    base: BaseDisk | None,
    cache_dir: Path,
    backend: str = "",
) -> Row:
    name = f"imagebuilder --compression {level}"
    row = Row(BENCH, name + (f" --disk-backend {backend}" if backend else ""))
    why = missing("imagebuilder.export.recipe", "export_disk")
    if why:
        row.status = f"skipped: {why}"
        return row
    base_json = disks.base_to_json(base) if base else ""
    shas: list[str] = []
    backends: set[str] = set()

    def once(i: int) -> Sample:
        work = ctx.dir("runs", f"ours-{level}{backend}")
        src = disks.overlay(disk, fmt, ctx.scratch / "overlay-ours.qcow2")
        out = work / "out" / OUTPUT_NAME
        (work / "tmp").mkdir()
        (work / "out").mkdir()
        args = ["--disk", str(src), "--output", str(out), "--compression", level,
                "--cache-dir", str(cache_dir), "--work-dir", str(work / "tmp"),
                *(["--base", base_json] if base_json else []),
                *(["--disk-backend", backend] if backend else [])]  # fmt: skip
        sample, result = run_child(
            ctx.scratch / "child-result.json", "export", args, scratch=work, tmp=work / "tmp"
        )
        shas.append(str(result.get("sha256")))
        backends.add(str(result.get("backend") or "?"))
        return sample

    run_row(row, once, ctx)
    notes = [f"{'/'.join(sorted(backends))} backend"] if backends else []
    if len(shas) > 1:
        notes.append("outputs identical" if len(set(shas)) == 1 else "outputs DIFFER between runs")
    row.note = ", ".join(notes)
    return row


def packer_maas(ctx: Context, disk: Path, fmt: str) -> Row:
    row = Row(BENCH, "packer-maas post-processor (tar, pigz --best)")
    for tool in ("qemu-nbd", "nbdfuse", "nbdkit", "fuse2fs", "tar", "parted"):
        if shutil.which(tool) is None:
            row.status = f"unavailable: {tool} not installed"
            return row

    def once(i: int) -> Sample:
        work = ctx.dir("runs", "packer-maas")
        src = disks.overlay(disk, fmt, ctx.scratch / "overlay-packer.qcow2")
        (work / "out").mkdir()
        proc = reference.PackerMaasPostProcessor(src, "qcow2", work / "out" / OUTPUT_NAME,
                                                 work / "packer-maas-tmp")  # fmt: skip
        return measure(proc.run, scratch=work)

    row.note = "fixed sleeps of fuse-nbd not counted"
    return run_row(row, once, ctx)


def virt_tar_out(ctx: Context, disk: Path, fmt: str) -> Row:
    row = Row(BENCH, "virt-tar-out | pigz (libguestfs, TCG)")
    why = reference.guestfs_ready()
    if why:
        row.status = f"unavailable: {why}"
        return row

    def once(i: int) -> Sample:
        work = ctx.dir("runs", "virt-tar-out")
        src = disks.overlay(disk, fmt, ctx.scratch / "overlay-guestfs.qcow2")
        return measure(lambda: reference.virt_tar_out_export(src, work / OUTPUT_NAME), scratch=work)

    return run_row(row, once, ctx)


def ratios(rows: dict[str, Row]) -> list[Ratio]:
    """Speed-ups and size ratios against packer-maas (and virt-tar-out), RSS, scratch."""
    out: list[Ratio] = []
    ref = rows["packer-maas"]
    vto = rows["virt-tar-out"]
    for level in ("fast", "default", "best"):
        row = rows.get(level)
        if row is None:
            continue
        speed_t, size_t = TARGETS.get(level, (0.0, 0.0))
        out.append(Ratio(BENCH, f"{level}: speed-up vs packer-maas",
                         ratio(ref.median("wall"), row.median("wall")),
                         f">= {speed_t:g}" if speed_t else ""))  # fmt: skip
        out.append(Ratio(BENCH, f"{level}: size vs packer-maas",
                         ratio(row.median("output_size"), ref.median("output_size")),
                         f"<= {size_t:g}" if size_t else ""))  # fmt: skip
        if vto.ok:
            out.append(Ratio(BENCH, f"{level}: speed-up vs virt-tar-out | pigz",
                             ratio(vto.median("wall"), row.median("wall"))))  # fmt: skip
    fuse = rows.get("default-fuse")
    if fuse is not None and fuse.ok:
        out.append(Ratio(BENCH, "default, fuse backend: speed-up vs packer-maas",
                         ratio(ref.median("wall"), fuse.median("wall"))))  # fmt: skip
    mine = [r for k, r in rows.items() if k != "packer-maas" and k != "virt-tar-out" and r.ok]
    if mine:
        rss = max(max(s.extra.get("python_rss", 0.0) for s in r.samples) for r in mine)
        out.append(Ratio(BENCH, "python peak RSS (max of all runs)", rss / MB,
                         f"<= {PYTHON_RSS_LIMIT_MB}", " MB"))  # fmt: skip
        worst = max(
            max(ratio(float(s.scratch), float(s.output_size)) for s in r.samples) for r in mine
        )
        out.append(Ratio(BENCH, "scratch disk / output size (worst run)", worst, "<= 1"))
    if ref.ok:
        out.append(Ratio(BENCH, "packer-maas scratch disk / output size",
                         ratio(ref.median("scratch"), ref.median("output_size"))))  # fmt: skip
    return out


def bench_export(ctx: Context) -> tuple[list[Row], list[Ratio]]:
    disk, fmt, base = the_disk(ctx)
    ctx.log(f"export: disk {disk} ({fmt}, {disk.stat().st_size / MB:.0f} MB file)")
    disks.warm_cache(disk)
    cache_dir = disks.cache_dirs()[0] if base is None else base.path.parents[2]
    rows: dict[str, Row] = {}
    for level in ctx.levels:
        rows[level] = ours(ctx, level, disk, fmt, base, cache_dir)
    if ctx.fuse_row and "default" in ctx.levels:  # packer-maas reads through FUSE too
        rows["default-fuse"] = ours(ctx, "default", disk, fmt, base, cache_dir, "fuse")
    rows["packer-maas"] = packer_maas(ctx, disk, fmt)
    rows["virt-tar-out"] = virt_tar_out(ctx, disk, fmt)
    shutil.rmtree(ctx.scratch / "runs", ignore_errors=True)
    return list(rows.values()), ratios(rows)
