"""Pieces the benchmark modules share: is a module there yet, run a child step.

Nothing here prints.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imagebuilder import run

from .harness import Sample, measure

REPO = Path(__file__).resolve().parent.parent


def missing(module: str, *names: str) -> str | None:
    """Why ``module`` (with attributes ``names``) cannot be used yet, or None."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        return f"{module} is not there yet ({exc})"
    except Exception as exc:  # a module being written may not even import
        return f"{module} does not import: {type(exc).__name__}: {exc}"
    absent = [n for n in names if not hasattr(mod, n)]
    if absent:
        return f"{module} has no {', '.join(absent)} yet"
    return None


def child_argv(result: Path, step: str, args: Sequence[str]) -> list[str]:
    """The command line of one imagebuilder step run by ``bench.child``."""
    return [sys.executable, "-m", "bench.child", str(result), step, *args]


def run_child(
    result: Path, step: str, args: Sequence[str], *, scratch: Path, tmp: Path
) -> tuple[Sample, dict[str, Any]]:
    """Run ``bench.child`` under a monitor; scratch disk counts everything under ``scratch``.

    The child's TMPDIR is ``tmp`` (inside ``scratch``), so temporary files count too.
    """
    out: dict[str, Any] = {}

    def step_fn() -> Path | None:
        result.unlink(missing_ok=True)
        run.run(child_argv(result, step, args), env={"TMPDIR": str(tmp)}, cwd=REPO)
        out.update(json.loads(result.read_text()))
        return Path(out["output"]) if out.get("output") else None

    sample = measure(step_fn, scratch=scratch)
    sample.extra["python_rss"] = float(out.get("python_rss", 0))
    for stage, secs in out.get("timings") or []:
        sample.extra[f"stage:{stage}"] = float(secs)
    return sample, out
