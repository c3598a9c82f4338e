"""Benchmark 3: the whole build of the bootstrap bookworm image, cold and warm.

``pipeline.build`` runs in a child process (``bench.child build``) with a no-op
customize script: once with an empty cache directory (cold: mmdebstrap, accelerator
probe, everything) and once with the cache that already holds the base (warm). The
stage timings the build reports (``BuildResult.timings``) are kept per run and shown
as the row's note. One run each: a build takes minutes. This module does not print.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import disks
from .common import missing, run_child
from .harness import Context, Ratio, Row, Sample, ratio, run_row

BENCH = "build"
NOOP_SCRIPT = "#!/bin/sh\n# bench: a customize script that does nothing\nexit 0\n"
OUTPUT_NAME = "custom-cloudimg.tar.gz"


#: Stages of pipeline.build that are not steps inside the build VM.
OUTER = ("base", "vm", "export", "accel-probe", "boot", "poweroff")


def stages(sample: Sample) -> dict[str, float]:
    """The issue's breakdown: base (fetch or bootstrap), boot, provision, poweroff, export."""
    st = {k.removeprefix("stage:"): v for k, v in sample.extra.items() if k.startswith("stage:")}
    out = {"base": st.get("base", 0.0)}
    if "accel-probe" in st:
        out["accel-probe"] = st["accel-probe"]
    out["boot"] = st.get("boot", 0.0)
    out["provision"] = sum(v for k, v in st.items() if k not in OUTER)
    out["poweroff"] = st.get("poweroff", 0.0)
    inner = out["boot"] + out["provision"] + out["poweroff"] + out.get("accel-probe", 0.0)
    out["vm other"] = max(0.0, st.get("vm", 0.0) - inner)  # overlay, seed, qemu start/stop
    out["export"] = st.get("export", 0.0)
    return out


def stage_note(sample: Sample) -> str:
    """``base 95.1 s, boot 60.2 s, provision 30.0 s, ...`` for the row's note."""
    return ", ".join(f"{name} {secs:.1f} s" for name, secs in stages(sample).items())


def one_build(ctx: Context, name: str, cache_dir: Path, script: Path) -> Row:
    row = Row(BENCH, name)

    def once(i: int) -> Sample:
        work = ctx.dir("runs", name.replace(" ", "-"))
        (work / "tmp").mkdir()
        out = work / OUTPUT_NAME
        args = ["--output", str(out), "--customize", str(script),
                "--cache-dir", str(cache_dir), "--work-dir", str(work / "tmp")]  # fmt: skip
        sample, _ = run_child(
            ctx.scratch / "child-result.json", "build", args, scratch=work, tmp=work / "tmp"
        )
        return sample

    run_row(row, once, ctx, max_runs=1)  # a build is minutes long: one run
    if row.ok:
        row.note = stage_note(row.samples[0])
    return row


def bench_build(ctx: Context) -> tuple[list[Row], list[Ratio]]:
    why = missing("imagebuilder.pipeline", "build") or missing(
        "imagebuilder.export.recipe", "export_disk"
    )
    why = why or missing("imagebuilder.vm.provision", "provision")
    if why:
        return [Row(BENCH, "whole build", status=f"skipped: {why}")], []
    if os.geteuid() != 0:
        return [Row(BENCH, "whole build", status="skipped: the bootstrap base needs root")], []
    script = ctx.scratch / "customize-noop.sh"
    script.write_text(NOOP_SCRIPT)
    script.chmod(0o755)
    cold_cache = ctx.dir("cold-cache")
    cold = one_build(ctx, "cold (empty cache)", cold_cache, script)
    # Warm: the cache that holds the bench base (the cold run just filled cold_cache).
    base = disks.find_base()
    warm_cache = base.path.parents[2] if base is not None else cold_cache
    warm = one_build(ctx, "warm (cached base)", warm_cache, script)
    out = [Ratio(BENCH, "cold / warm wall time", ratio(cold.median("wall"), warm.median("wall")))]
    return [cold, warm], out
