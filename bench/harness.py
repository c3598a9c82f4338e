"""Measuring one command or step: wall time, peak RSS, peak scratch disk, output size.

A :class:`Monitor` polls, on a background thread, the resident memory of every
descendant process of the benchmark (summed: a pipeline's processes run at the same
time) and the disk space allocated under a scratch directory (not crossing into
mounts), keeping the peaks. :func:`measure` wraps one run in a monitor and returns a
:class:`Sample`; :class:`Row` holds the samples of one contender and reports medians.
This module knows nothing about images or imagebuilder; it must not print.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imagebuilder.errors import ImageBuilderError

MB = 1_000_000

#: Keys of :class:`Sample` fields that are medians in a row.
METRICS = ("wall", "output_size", "peak_disk", "peak_rss")


def median(values: list[float]) -> float:
    """The median; NaN for no values (a row that never ran)."""
    return float(statistics.median(values)) if values else float("nan")


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when either is missing or the denominator is 0."""
    if denominator == 0 or numerator != numerator or denominator != denominator:
        return float("nan")
    return numerator / denominator


@dataclass
class Sample:
    """One run of one contender."""

    wall: float  # seconds
    output_size: int = 0  # bytes of the finished output (0: no output)
    peak_disk: int = 0  # bytes allocated under the scratch directory, at the peak
    peak_rss: int = 0  # bytes: summed RSS of all child processes, at the peak
    extra: dict[str, float] = field(default_factory=dict)  # e.g. python_rss, stage times

    @property
    def scratch(self) -> int:
        """Disk used beyond the output itself (temporary files, uncompressed tars)."""
        return max(0, self.peak_disk - self.output_size)


@dataclass
class Row:
    """One contender in one benchmark: its runs, or why it has none."""

    bench: str
    name: str
    samples: list[Sample] = field(default_factory=list)
    status: str = "ok"  # "ok", or "unavailable: ...", "failed: ...", "skipped: ..."
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok" and bool(self.samples)

    def median(self, metric: str) -> float:
        if not self.ok:
            return float("nan")
        if metric == "scratch":
            return median([float(s.scratch) for s in self.samples])
        if metric in METRICS:
            return median([float(getattr(s, metric)) for s in self.samples])
        return median([s.extra[metric] for s in self.samples if metric in s.extra])

    def to_json(self) -> dict[str, Any]:
        medians = {m: self.median(m) for m in (*METRICS, "scratch")}
        return {
            "bench": self.bench,
            "name": self.name,
            "status": self.status,
            "note": self.note,
            "runs": len(self.samples),
            "median": {k: (None if v != v else v) for k, v in medians.items()},
            "samples": [asdict(s) for s in self.samples],
        }


@dataclass
class Ratio:
    """A derived comparison, with the target it must meet when there is one."""

    bench: str
    name: str
    value: float
    target: str = ""  # e.g. ">= 5", "<= 1.12"; empty: informational
    unit: str = "x"

    @property
    def met(self) -> bool | None:
        if not self.target or self.value != self.value:
            return None
        op, _, num = self.target.partition(" ")
        limit = float(num)
        return self.value >= limit if op == ">=" else self.value <= limit

    def to_json(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "name": self.name,
            "value": None if self.value != self.value else self.value,
            "unit": self.unit,
            "target": self.target,
            "met": self.met,
        }


# ---- process tree and disk polling ------------------------------------------------


def become_subreaper() -> None:
    """Adopt orphaned descendants (daemons such as fuse2fs), so their memory is counted."""
    pr_set_child_subreaper = 36
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's), from /proc."""
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"{task.path}/children") as f:
                kids.extend(int(x) for x in f.read().split())
    return kids


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = children_of(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children_of(p))
    return out


def rss_of(pid: int) -> int:
    """Resident set size of one process in bytes (0 if it is gone)."""
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return 0


def tree_rss(pid: int) -> int:
    """Summed RSS of every descendant of ``pid`` (not ``pid`` itself)."""
    return sum(rss_of(p) for p in descendants(pid))


def disk_usage(path: Path) -> int:
    """Bytes allocated under ``path``, like ``du -s --one-file-system`` (holes are free)."""
    total = 0
    try:
        top = os.lstat(path)
    except OSError:
        return 0
    todo = [os.fspath(path)]
    while todo:
        d = todo.pop()
        with contextlib.suppress(OSError), os.scandir(d) as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    if st.st_dev != top.st_dev:
                        continue  # a mount point (fuse2fs, nbdfuse): not scratch
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        todo.append(entry.path)
    return total


def reap_orphans(keep: set[int] | None = None) -> None:
    """Collect adopted daemons that have exited (zombies), leaving Popen's own alone."""
    for pid in children_of(os.getpid()):
        if keep and pid in keep:
            continue
        with contextlib.suppress(ChildProcessError, OSError), open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                os.waitpid(pid, os.WNOHANG)


class Monitor:
    """Polls peaks of descendant RSS and of scratch disk use until stopped."""

    def __init__(self, scratch: Path | None = None, *, interval: float = 0.1) -> None:
        self.scratch = scratch
        self.interval = interval
        self.peak_rss = 0
        self.peak_disk = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-monitor", daemon=True)

    def poll(self) -> None:
        self.peak_rss = max(self.peak_rss, tree_rss(os.getpid()))
        if self.scratch is not None:
            self.peak_disk = max(self.peak_disk, disk_usage(self.scratch))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()


def measure(
    step: Callable[[], Path | None],
    *,
    scratch: Path | None = None,
    interval: float = 0.1,
) -> Sample:
    """Run ``step`` once under a :class:`Monitor`; it returns its output file, if any."""
    with Monitor(scratch, interval=interval) as mon:
        start = time.monotonic()
        output = step()
        wall = time.monotonic() - start
    reap_orphans()
    size = output.stat().st_size if output is not None and output.exists() else 0
    return Sample(wall=wall, output_size=size, peak_disk=mon.peak_disk, peak_rss=mon.peak_rss)


def runs_needed(first_wall: float, *, minimum: int = 3, long: float = 60.0) -> int:
    """How many runs a contender gets: one when a run takes a minute or more, else ``minimum``."""
    return 1 if first_wall >= long else minimum


@contextlib.contextmanager
def timer() -> Iterator[Callable[[], float]]:
    """``with timer() as elapsed: ...; elapsed()`` gives seconds since the block began."""
    start = time.monotonic()
    yield lambda: time.monotonic() - start


@dataclass
class Context:
    """What every benchmark gets: where to write, how many runs, where to say what it does."""

    scratch: Path  # a private directory on a real disk (removed afterwards)
    runs: int = 3  # runs for anything under a minute
    log: Callable[[str], None] = lambda _line: None
    disk: Path | None = None  # --disk: export this instead of the bootstrap base
    levels: tuple[str, ...] = ("fast", "default", "best")
    fuse_row: bool = False  # also export with --disk-backend fuse (packer-maas's way in)

    def dir(self, *parts: str) -> Path:
        """A fresh, empty directory under the scratch root."""
        path = self.scratch.joinpath(*parts)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path


def run_row(
    row: Row, once: Callable[[int], Sample], ctx: Context, *, max_runs: int | None = None
) -> Row:
    """Fill ``row``: ``once(i)`` measures run i; repeated to ``ctx.runs`` if under a minute.

    A failure of the contender (an imagebuilder error, a host command failing) marks
    the row failed with its one-line reason; bugs in the bench itself propagate.
    """
    try:
        first = once(0)
        row.samples.append(first)
        ctx.log(f"  {row.bench} / {row.name}: run 1 {first.wall:.2f} s")
        runs = runs_needed(first.wall, minimum=ctx.runs)
        for i in range(1, min(runs, max_runs or runs)):
            s = once(i)
            row.samples.append(s)
            ctx.log(f"  {row.bench} / {row.name}: run {i + 1} {s.wall:.2f} s")
    except (ImageBuilderError, OSError) as exc:
        reason = exc.message if isinstance(exc, ImageBuilderError) else str(exc)
        row.status = "failed: " + " ".join(reason.split())[:160]
        ctx.log(f"  {row.bench} / {row.name}: {row.status}")
    return row
