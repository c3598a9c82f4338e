"""Test-wide capability checks: one place decides which tests this host can run.

Markers: ``vm`` needs qemu-system (TCG is fine), ``root`` needs root and loop
devices, ``guestfs`` needs a libguestfs appliance that really launches here (probed
once per run; hosts without a kernel in /boot cannot build one), ``slow`` is a long
real build (``make test-slow``), ``debian_installer`` needs a Debian mirror that has
the installer's components. Skips always say why.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuilder.progress import Event, Progress
from tests.fakes.cloudimages import CloudImages, GpgKeys


def _vm_missing() -> str | None:
    for tool in ("qemu-system-x86_64", "qemu-img"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (run scripts/setup-host.sh)"
    if not Path("/usr/share/OVMF/OVMF_CODE_4M.fd").exists():
        return "OVMF firmware not installed (package ovmf)"
    return None


def _root_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not Path("/dev/loop-control").exists():
        return "no loop devices (/dev/loop-control missing)"
    return None


def pytest_configure(config: pytest.Config) -> None:
    # One cache of base disks shared by every test that needs one (a bootstrap is
    # ~2 minutes); kept between runs on a developer machine, fresh in CI.
    os.environ.setdefault(
        "IMAGEBUILDER_TEST_CACHE", str(Path.home() / ".cache" / "imagebuilder-tests")
    )


def _debian_installer_missing() -> str | None:
    """A real Debian install needs a mirror with the installer's udebs (partial mirrors,
    like the one these machines reach, lack many)."""
    from imagebuilder.errors import ImageBuilderError
    from imagebuilder.families import catalogue
    from imagebuilder.installer import preflight

    bookworm = catalogue.get("bookworm")
    kind = bookworm.family.installer
    assert kind is not None
    try:
        preflight.check_mirror(kind, bookworm.archive_mirror("amd64"), "bookworm", "amd64", None)
    except ImageBuilderError as exc:
        return exc.message
    return None


def _guestfs_missing() -> str | None:
    """Why no libguestfs appliance launches here: the static check, then a real launch."""
    from imagebuilder.disk import appliance

    reason = appliance.unavailable_reason()
    if reason is not None:
        return reason
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True)
    try:
        if "LIBGUESTFS_BACKEND" not in os.environ:
            g.set_backend("direct")
        g.set_backend_settings(["force_tcg"])
        g.add_drive_scratch(16 << 20)
        g.launch()
    except RuntimeError as exc:
        return f"libguestfs could not launch its appliance ({str(exc).splitlines()[0]})"
    finally:
        g.close()
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = {"vm": _vm_missing(), "root": _root_missing()}
    if any("debian_installer" in item.keywords for item in items):
        reasons["debian_installer"] = _debian_installer_missing()
    if any("guestfs" in item.keywords for item in items):
        reasons["guestfs"] = _guestfs_missing()
    for item in items:
        for marker, reason in reasons.items():
            if reason and marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=f"{marker} test: {reason}"))


# ---- fixtures shared by the download, lock and bundle tests ---------------------


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpgKeys]:
    """A throwaway GPG key that signs the fake cloud-images server's SHA256SUMS."""
    k = GpgKeys(tmp_path_factory.mktemp("gnupg"))
    yield k
    k.close()


@pytest.fixture
def server(keys: GpgKeys, monkeypatch: pytest.MonkeyPatch) -> Iterator[CloudImages]:
    """A local server laid out like cloud-images.ubuntu.com."""
    for var in ("no_proxy", "NO_PROXY"):  # never send 127.0.0.1 to a host proxy
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    with CloudImages(keys) as srv:
        yield srv


@pytest.fixture
def events() -> list[Event]:
    return []


@pytest.fixture
def progress(events: list[Event]) -> Progress:
    """A Progress that records every event into ``events``."""
    return Progress(events.append)
