"""The whole build, end to end, as `make image` runs it (bootstrap bookworm base, TCG
build VM, export, `imagebuilder inspect`), then `imagebuilder test` on that very file:
deployed by the real curtin as MAAS does, on BIOS and on UEFI, and booted.

The curtin is the vendor's unmodified 23.1.1 (../shared/vendor). The deploy VM and
the deployed machine reach nothing but imagebuilder's region stand-in (qemu
``restrict=on``), so a deploy that would install packages fails here as it would on
an air-gapped MAAS site. The stand-in is not MAAS: it serves the image at the rack's
path, the MAAS metadata (cloud-init's real MAAS datasource reads it, OAuth checked)
and takes curtin's and cloud-init's status events.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.root]

VENDOR_CURTIN = Path(__file__).resolve().parents[2] / "shared/vendor/curtin-23.1.1-737e305.tar.gz"


def _imagebuilder(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "imagebuilder", *args]
    argv += ["--cache-dir", os.environ["IMAGEBUILDER_TEST_CACHE"]]
    if args[0] == "test":
        argv += ["--curtin", str(VENDOR_CURTIN)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


@dataclass(frozen=True)
class Made:
    out: Path
    work: Path
    proc: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    """`make image`'s build: bootstrap bookworm, the default tgz."""
    base = tmp_path_factory.mktemp("made")
    out, work = base / "custom-cloudimg.tar.gz", base / "work"
    proc = _imagebuilder(
        "bookworm", "--base", "bootstrap", "-o", str(out), "--work-dir", str(work), timeout=1800
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Made(out, work, proc)


def test_make_image_equivalent(made: Made) -> None:
    out = made.out
    assert out.is_file()
    assert Path(str(out) + ".manifest.json").is_file()
    assert (out.parent / "SHA256SUMS").read_text().split()[1].lstrip("*") == out.name
    for stage in ("base", "vm", "export"):  # every stage was reported
        assert f"==> {stage}" in made.proc.stderr

    inspect = subprocess.run(
        [sys.executable, "-m", "imagebuilder", "inspect", str(out)], capture_output=True, text=True
    )
    assert inspect.returncode == 0, inspect.stdout + inspect.stderr

    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        hook = tar.getmember("./curtin/curtin-hooks")
        assert hook.mode & 0o777 == 0o750 and hook.uid == 0 and hook.gid == 0
        assert tar.getmember("./etc/machine-id").size == 0
        debs = [n for n in names if n.startswith("./curtin/debs/")]
        assert [n.split("/")[-1].split("_")[0] for n in debs] == ["grub-pc"]  # BIOS, offline
        debconf = tar.extractfile("./var/cache/debconf/config.dat")
        assert debconf is not None and b"/dev/vda" not in debconf.read()
    assert not any(n.startswith("./etc/ssh/ssh_host_") for n in names)
    assert "./etc/fstab" not in names
    assert not any("imagebuilder-build" in n for n in names)
    # Nothing of the build is left: no build directory, no process using it.
    assert list(made.work.iterdir()) == []
    ps = subprocess.run(["pgrep", "-f", str(made.work)], capture_output=True, text=True)
    assert ps.stdout.strip() == ""


def test_make_image_output_deploys_on_bios_and_uefi(made: Made) -> None:
    if not VENDOR_CURTIN.exists():
        pytest.skip(f"{VENDOR_CURTIN} not beside the checkout")
    proc = _imagebuilder("test", str(made.out), "--firmware", "both")
    assert proc.returncode == 0, proc.stderr[-6000:]
    for fw in ("bios", "uefi"):
        assert f"deployed {made.out.name} on {fw}:" in proc.stderr
    assert proc.stdout.strip() == f"OK: {made.out} deploys with curtin and boots (both)"
    ps = subprocess.run(["pgrep", "-f", "imagebuilder-deploy"], capture_output=True, text=True)
    assert ps.stdout.strip() == ""  # nothing of the test is left running
