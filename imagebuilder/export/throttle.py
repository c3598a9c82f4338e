"""Progress counters of an export, sent at most every 0.2 seconds.

A tar of small files, or a disk read in 4 MiB pieces, reports its position far
more often than anyone can watch; :class:`Throttle` passes on one event per 0.2 s,
and :meth:`Throttle.finish` the total at the end.

This module only forwards counter events to :class:`imagebuilder.progress.Progress`:
it never prints and knows nothing of what is counted.
"""

from __future__ import annotations

import time

from ..progress import Progress


class Throttle:
    """Progress counter events at most every 0.2 s (a tar of small files calls often)."""

    def __init__(self, progress: Progress, name: str, total: int | None) -> None:
        self.progress, self.name, self.total, self.last = progress, name, total, 0.0

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= 0.2:
            self.last = now
            self.progress.counter(self.name, done, self.total)

    def finish(self) -> None:
        self.progress.counter(self.name, self.total or 0, self.total)
