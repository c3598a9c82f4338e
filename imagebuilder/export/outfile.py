"""The output file of an export: complete or absent, and hashed as it is written.

The output is written to ``<out>.partial-XXXX`` beside it, hashed (sha256) as it
is written, and renamed only when complete; on any error or Ctrl-C the partial
file is removed. Runs of zeros can be left as holes (ddraw) and still hashed.

This module knows nothing of disks, tar or compression: it takes bytes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ExportError


class AtomicOutput:
    """``<dest>.partial-XXXX`` while writing (hashed on the way), renamed when complete."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.sha = hashlib.sha256()
        self.size = 0
        self._tmp: Path | None = None
        self._f: Any = None

    def __enter__(self) -> AtomicOutput:
        if not self.dest.parent.is_dir():
            raise ExportError(
                f"output directory {self.dest.parent} does not exist",
                hint="create it or choose another -o",
            )
        fd, tmp = tempfile.mkstemp(dir=self.dest.parent, prefix=self.dest.name + ".partial-")
        self._tmp = Path(tmp)
        self._f = os.fdopen(fd, "wb", buffering=1 << 20)
        return self

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._f.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def write_zeros(self, n: int) -> None:
        """Zeros as a hole (ddraw): hashed, not written."""
        zeros = bytes(min(n, 1 << 20))
        left = n
        while left:
            k = min(left, len(zeros))
            self.sha.update(zeros[:k])
            left -= k
        self._f.seek(n, os.SEEK_CUR)
        self.size += n

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self._tmp is not None
        try:
            if exc_type is None:
                self._f.truncate(self.size)
                self._f.flush()
                os.fsync(self._f.fileno())
                umask = os.umask(0o022)
                os.umask(umask)
                os.fchmod(self._f.fileno(), 0o666 & ~umask)
            self._f.close()
            if exc_type is None:
                os.replace(self._tmp, self.dest)
        finally:
            self._tmp.unlink(missing_ok=True)  # gone already after a successful rename
