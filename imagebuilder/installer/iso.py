"""Read files out of an ISO 9660 image (installer ISOs) with pycdlib, without mounting.

An installer ISO carries its kernel and initrd (``casper/vmlinuz`` on Ubuntu's
live-server ISO, ``install.amd/vmlinuz`` on Debian's netinst): :func:`extract`
streams such a member to a file, looked up by its Rock Ridge name, then its
Joliet name, then its plain ISO 9660 name (upper case, ``;1`` version). The
output appears only complete (temporary name, then ``os.replace``). This module
reads ISOs; it never writes one (see :mod:`imagebuilder.vm.seed`) and knows nothing
about qemu.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from ..errors import SourceError

__all__ = ["extract", "extract_many", "iso_names", "member_exists", "open_iso"]


@contextlib.contextmanager
def open_iso(path: Path) -> Iterator[pycdlib.PyCdlib]:
    """``path`` opened read-only with pycdlib; SourceError if it is not an ISO image."""
    iso = pycdlib.PyCdlib()
    try:
        iso.open(os.fspath(path))
    except FileNotFoundError:
        raise SourceError(f"ISO {path} not found", hint="check --iso PATH") from None
    except (PyCdlibException, OSError) as exc:
        raise SourceError(
            f"{path} is not a readable ISO 9660 image: {exc}",
            hint="check that the file is complete (compare its sha256 with SHA256SUMS)",
        ) from None
    try:
        yield iso
    finally:
        with contextlib.suppress(PyCdlibException, OSError):
            iso.close()


def iso_names(member: str) -> list[str]:
    """Plain ISO 9660 spellings of ``member``: ``casper/vmlinuz`` -> ``/CASPER/VMLINUZ.;1``..."""
    parts = [p for p in member.strip("/").split("/") if p]
    if not parts:
        return []
    dirs = "".join(f"/{p.upper()}" for p in parts[:-1])
    name = parts[-1].upper()
    spellings = [f"{dirs}/{name};1"] if "." in name else [f"{dirs}/{name}.;1", f"{dirs}/{name};1"]
    return spellings


def _lookups(iso: pycdlib.PyCdlib, member: str) -> list[dict[str, str]]:
    path = "/" + member.strip("/")
    found: list[dict[str, str]] = []
    if iso.has_rock_ridge():
        found.append({"rr_path": path})
    if iso.has_joliet():
        found.append({"joliet_path": path})
    found += [{"iso_path": name} for name in iso_names(member)]
    return found


def _find(iso: pycdlib.PyCdlib, member: str) -> dict[str, str] | None:
    """The pycdlib keyword that names ``member`` in this ISO, or None."""
    for kwargs in _lookups(iso, member):
        try:
            record = iso.get_record(**kwargs)
        except PyCdlibException:
            continue
        if record is not None and not record.is_dir():
            return kwargs
    return None


def member_exists(iso: pycdlib.PyCdlib, member: str) -> bool:
    return _find(iso, member) is not None


def _extract_open(iso: pycdlib.PyCdlib, source: Path, member: str, dest: Path) -> Path:
    kwargs = _find(iso, member)
    if kwargs is None:
        raise SourceError(
            f"ISO {source} has no file {member}",
            hint="is this the right installer ISO for this series and architecture?",
        )
    tmp = dest.with_name(f".{dest.name}.partial")
    try:
        with open(tmp, "wb") as out:
            iso.get_file_from_iso_fp(out, **kwargs)
        os.replace(tmp, dest)
    except PyCdlibException as exc:
        raise SourceError(f"reading {member} from ISO {source} failed: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def extract(source: Path, member: str, dest: Path) -> Path:
    """Stream ``member`` (``dir/name``, any namespace) of ISO ``source`` to ``dest``."""
    with open_iso(source) as iso:
        return _extract_open(iso, source, member, dest)


def extract_many(source: Path, members: Mapping[str, Path]) -> dict[str, Path]:
    """:func:`extract` for several members, opening the ISO once; member -> written path."""
    with open_iso(source) as iso:
        return {m: _extract_open(iso, source, m, dest) for m, dest in members.items()}
