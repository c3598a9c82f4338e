"""The release catalogue: every series of every family module, and lookups.

The rows live in the family modules (``debian.RELEASES``, ``ubuntu.RELEASES``);
this module only gathers them, so adding a family adds its module here and nothing
else. ``register`` lets a test plug a look-alike family in for one test. No network,
no filesystem: ``sources`` turns the patterns into downloads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..errors import UnknownSeriesError
from . import debian, ubuntu
from .seam import Family, Release

#: Debian/Ubuntu architecture name -> qemu system emulator suffix.
QEMU_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}

FAMILIES: tuple[Family, ...] = (ubuntu.FAMILY, debian.FAMILY)
RELEASES: tuple[Release, ...] = (*ubuntu.RELEASES, *debian.RELEASES)
_BY_NAME: dict[str, Release] = {}


def _index() -> None:
    _BY_NAME.clear()
    _BY_NAME.update({r.codename: r for r in RELEASES} | {r.version: r for r in RELEASES})


_index()


def get(series: str) -> Release:
    """Look a series up by codename or version, or raise UnknownSeriesError."""
    try:
        return _BY_NAME[series.lower()]
    except KeyError:
        known = ", ".join(r.codename for r in RELEASES)
        raise UnknownSeriesError(
            f"unknown series {series!r}; known series: {known}",
            hint="run 'imagebuilder releases' for versions and architectures",
        ) from None


def names() -> list[str]:
    return [r.codename for r in RELEASES]


def family_named(name: str) -> Family | None:
    """The family whose os-release ID is ``name``, if the catalogue has it."""
    return next((f for f in FAMILIES if f.name == name), None)


@contextlib.contextmanager
def register(family: Family, releases: tuple[Release, ...]) -> Iterator[None]:
    """Add ``family`` and its ``releases`` for the duration of the block (for tests)."""
    global FAMILIES, RELEASES
    saved = FAMILIES, RELEASES
    FAMILIES, RELEASES = (*FAMILIES, family), (*RELEASES, *releases)
    _index()
    try:
        yield
    finally:
        FAMILIES, RELEASES = saved
        _index()
