"""Progress events, kept apart from how they are shown.

Library code reports what happens through a :class:`Progress` object: stages
(named, timed), byte counters for long transfers, and info/warning lines. A
renderer decides how that looks: a TTY renderer with a live bar, a plain log
renderer, or JSON lines (``--json``). ``Progress()`` with no renderer is silent,
which is what library callers get unless they ask for more.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO


@dataclass(frozen=True)
class Event:
    """One thing that happened. ``kind`` is stage-start, stage-end, counter, info, warning."""

    kind: str
    name: str
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


Renderer = Callable[[Event], None]


class Progress:
    """The sink library code reports to."""

    def __init__(self, *renderers: Renderer) -> None:
        self._renderers = list(renderers)
        self._warned: set[str] = set()
        #: Seconds per finished stage, in order (the pipeline's timing table).
        self.timings: dict[str, float] = {}

    def emit(self, event: Event) -> None:
        for render in self._renderers:
            render(event)

    @contextlib.contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        start = time.monotonic()
        self.emit(Event("stage-start", name, {"detail": detail}))
        ok = False
        try:
            yield
            ok = True
        finally:
            elapsed = time.monotonic() - start
            self.timings[name] = self.timings.get(name, 0.0) + elapsed
            self.emit(Event("stage-end", name, {"seconds": round(elapsed, 3), "ok": ok}))

    def counter(self, name: str, done: int, total: int | None, unit: str = "B") -> None:
        self.emit(Event("counter", name, {"done": done, "total": total, "unit": unit}))

    def info(self, text: str) -> None:
        self.emit(Event("info", text))

    def warning(self, text: str, *, once: str | None = None) -> None:
        """Warn; with ``once`` a key, the same warning is shown only once per build."""
        if once is not None:
            if once in self._warned:
                return
            self._warned.add(once)
        self.emit(Event("warning", text))


def _human(n: float, unit: str) -> str:
    if unit != "B":
        return f"{n:.0f}{unit}"
    for suffix in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or suffix == "GiB":
            return f"{n:.1f} {suffix}" if suffix != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


class PlainRenderer:
    """Log lines: one per stage start/end and warning; counters every 10%."""

    def __init__(self, stream: TextIO | None = None, *, verbose: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self._last_pct: dict[str, int] = {}

    def __call__(self, ev: Event) -> None:
        line: str | None = None
        if ev.kind == "stage-start":
            line = f"==> {ev.name}" + (f": {ev.data['detail']}" if ev.data.get("detail") else "")
        elif ev.kind == "stage-end":
            status = "done" if ev.data["ok"] else "FAILED"
            line = f"<== {ev.name} {status} in {ev.data['seconds']:.1f} s"
        elif ev.kind == "warning":
            line = f"WARNING: {ev.name}"
        elif ev.kind == "info":
            line = f"    {ev.name}"
        elif ev.kind == "counter":
            total = ev.data["total"]
            if total:
                pct = int(100 * ev.data["done"] / total) // 10 * 10
                if pct != self._last_pct.get(ev.name):
                    self._last_pct[ev.name] = pct
                    line = f"    {ev.name}: {pct}% of {_human(total, ev.data['unit'])}"
        if line is not None:
            print(line, file=self.stream, flush=True)


class TTYRenderer(PlainRenderer):
    """Like PlainRenderer, with a live single-line bar for counters."""

    def __init__(self, stream: TextIO | None = None, *, verbose: bool = False) -> None:
        super().__init__(stream, verbose=verbose)
        self._bar_open = False
        self._last_draw = 0.0

    def __call__(self, ev: Event) -> None:
        if ev.kind == "counter":
            now = time.monotonic()
            done, total = ev.data["done"], ev.data["total"]
            if now - self._last_draw < 0.1 and done != total:
                return
            self._last_draw = now
            if total:
                frac = min(1.0, done / total)
                bar = "#" * int(frac * 30)
                text = (
                    f"\r    {ev.name} [{bar:<30}] {frac * 100:5.1f}% "
                    f"{_human(done, ev.data['unit'])}/{_human(total, ev.data['unit'])}"
                )
            else:
                text = f"\r    {ev.name} {_human(done, ev.data['unit'])}"
            self.stream.write(text + "\x1b[K")
            self.stream.flush()
            self._bar_open = True
            return
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False
        super().__call__(ev)


class JSONRenderer:
    """One JSON object per event, for machines (``--json``)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def __call__(self, ev: Event) -> None:
        obj = {"event": ev.kind, "name": ev.name, "time": round(ev.time, 3), **ev.data}
        print(json.dumps(obj, sort_keys=True), file=self.stream, flush=True)
