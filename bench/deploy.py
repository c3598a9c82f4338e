"""Benchmark 5: the deploy test (``imagebuilder test``) of the bootstrap bookworm tgz.

Builds the image once (warm cache, no customize), then deploys it with the real curtin
and boots it, one row per firmware: curtin's install and the first boot to cloud-init's
``modules-final`` are the row's note (from ``deploy_test``'s own result). There is no
reference pipeline to compare with (packer-maas never deploys what it builds), so the
only ratio is UEFI / BIOS. curtin comes from ``$IMAGEBUILDER_CURTIN`` or the vendor
tarball beside the checkout. This module does not print.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import disks
from .common import REPO, missing
from .harness import Context, Ratio, Row, Sample, ratio, run_row

BENCH = "deploy"
VENDOR = REPO.parent / "shared/vendor/curtin-23.1.1-737e305.tar.gz"


def _curtin() -> Path | None:
    env = os.environ.get("IMAGEBUILDER_CURTIN")
    if env:
        return Path(env)
    return VENDOR if VENDOR.exists() else None


def _image(ctx: Context, cache: Path) -> Path:
    from imagebuilder.pipeline import build
    from imagebuilder.progress import Progress

    out = ctx.dir("image") / "custom-cloudimg.tar.gz"
    build(disks.bench_config(cache, output=out), progress=Progress())
    return out


def bench_deploy(ctx: Context) -> tuple[list[Row], list[Ratio]]:
    why = missing("imagebuilder.deploy", "deploy_test") or missing("imagebuilder.pipeline", "build")
    curtin = _curtin()
    if why is None and curtin is None:
        why = f"no curtin: set IMAGEBUILDER_CURTIN or put {VENDOR.name} beside the checkout"
    if why is None and os.geteuid() != 0:
        why = "the bootstrap bases need root"
    if why:
        return [Row(BENCH, "deploy test", status=f"skipped: {why}")], []
    from imagebuilder.deploy import deploy_test

    base = disks.find_base()
    cache = base.path.parents[2] if base is not None else disks.cache_dirs()[0]
    image = _image(ctx, cache)
    rows = []
    for fw in ("bios", "uefi"):
        row = Row(BENCH, f"deploy + boot ({fw})")
        notes: list[str] = []

        def once(i: int, fw: str = fw, notes: list[str] = notes) -> Sample:
            r = deploy_test(image, firmware=fw, curtin=curtin, cache_dir=cache).results[0]
            extra = {"curtin": r.curtin_seconds, "first_boot": r.deployed_seconds}
            sample = Sample(wall=r.total_seconds, output_size=image.stat().st_size, extra=extra)
            notes.append(f"curtin {r.curtin_seconds:.0f} s, first boot {r.deployed_seconds:.0f} s")
            return sample

        run_row(row, once, ctx, max_runs=1)  # minutes long: one run
        row.note = notes[0] if notes else ""
        rows.append(row)
    bios, uefi = rows
    return rows, [Ratio(BENCH, "UEFI / BIOS deploy time", ratio(uefi.median("wall"),
                                                               bios.median("wall")))]  # fmt: skip
