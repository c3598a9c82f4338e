"""Rendering results: the host line, the table of rows, the ratios, the JSON file.

Pure formatting plus one write (the JSON file under ``bench/results/``); it measures
nothing and decides no targets.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .harness import MB, Ratio, Row

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def host_info(accel: str) -> dict[str, Any]:
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "cores": os.cpu_count() or 0,
        "cpu": cpu_model(),
        "memory_gib": round(mem / 2**30, 1),
        "accelerator": accel,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def host_line(host: dict[str, Any]) -> str:
    return (
        f"host: {host['cores']} cores ({host['cpu']}), {host['memory_gib']} GiB, "
        f"accelerator {host['accelerator']}, {host['date']}"
    )


def _num(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


def _mb(value: float) -> str:
    """Bytes as MB; "-" for 0 (not measured for this contender)."""
    return _num(value / MB) if value else "-"


HEADER = ("benchmark", "contender", "runs", "wall s", "output MB", "peak disk MB",
          "scratch MB", "peak RSS MB", "status / note")  # fmt: skip


def row_cells(row: Row) -> tuple[str, ...]:
    status = row.note if row.ok else row.status
    if not row.ok:
        return (row.bench, row.name, "0", "-", "-", "-", "-", "-", status)
    disk = row.median("peak_disk")
    return (
        row.bench,
        row.name,
        str(len(row.samples)),
        _num(row.median("wall"), 2),
        _mb(row.median("output_size")),
        _mb(disk),
        _mb(row.median("scratch")) if disk else "-",
        _mb(row.median("peak_rss")),
        status,
    )


def ratio_cells(r: Ratio) -> tuple[str, ...]:
    verdict = {True: "MET", False: "NOT MET", None: ""}[r.met]
    value = _num(r.value, 2) + (r.unit if r.value == r.value else "")
    return (r.bench, r.name, value, f"target {r.target}" if r.target else "", verdict)


def format_grid(rows: Sequence[Sequence[str]], *, right: set[int] | None = None) -> str:
    """Columns padded to their widest cell; columns in ``right`` right-aligned."""
    right = right or set()
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_table(rows: Sequence[Row], ratios: Sequence[Ratio], host: dict[str, Any]) -> str:
    """The whole report as text: host line, the rows, then the ratios and verdicts."""
    parts = [host_line(host), ""]
    if rows:
        grid = [HEADER, *(row_cells(r) for r in rows)]
        parts.append(format_grid(grid, right={2, 3, 4, 5, 6, 7}))
    if ratios:
        parts += ["", "ratios (medians):"]
        parts.append(format_grid([ratio_cells(r) for r in ratios], right={2}))
    return "\n".join(parts) + "\n"


def write_json(
    rows: Sequence[Row],
    ratios: Sequence[Ratio],
    host: dict[str, Any],
    argv: Sequence[str],
    *,
    directory: Path = RESULTS_DIR,
) -> Path:
    """Write ``<directory>/<timestamp>.json`` (complete files only) and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = directory / f"{stamp}.json"
    data = {
        "command": " ".join(["python", "-m", "bench", *argv]),
        "host": host,
        "rows": [r.to_json() for r in rows],
        "ratios": [r.to_json() for r in ratios],
    }
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def _md_table(rows: Sequence[Sequence[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body]
    return "\n".join(lines)


def format_markdown(
    rows: Sequence[Row], ratios: Sequence[Ratio], host: dict[str, Any], command: str
) -> str:
    """The same report as Markdown tables, for docs/performance.md."""
    parts = [f"Command: `{command}`", "", host_line(host).replace("host: ", "Host: ", 1), ""]
    if rows:
        parts += [_md_table([HEADER, *(row_cells(r) for r in rows)]), ""]
    if ratios:
        head = ("benchmark", "ratio", "value", "target", "verdict")
        parts += [_md_table([head, *(ratio_cells(r) for r in ratios)]), ""]
    return "\n".join(parts)
