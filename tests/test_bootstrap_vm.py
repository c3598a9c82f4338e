"""The bootstrap base for real: build bookworm amd64 once, boot it with SeaBIOS and OVMF.

The base is built once per module (mmdebstrap from the Debian mirror, a few
minutes) into a cache under pytest's temp dir, or into ``$IMAGEBUILDER_TEST_CACHE``
so repeated runs reuse it. Each boot runs qemu (TCG) on a qcow2 overlay so the
cached base is never written, and waits for a getty ``login:`` prompt on the
serial console. The qemu helper here is deliberately local: the test checks the
disk, not imagebuilder's VM code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from imagebuilder import run
from imagebuilder.base.bootstrap import bootstrap_base
from imagebuilder.base.recipe import recipe
from imagebuilder.config.tree import Config, resolve
from imagebuilder.progress import Progress
from imagebuilder.sources.basedisk import BaseDisk

pytestmark = [pytest.mark.vm, pytest.mark.root]

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
LOGIN_DEADLINE = 240.0


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    cache = os.environ.get("IMAGEBUILDER_TEST_CACHE")
    cache_dir = Path(cache) if cache else tmp_path_factory.mktemp("bootstrap-cache")
    return resolve(
        {"series": "bookworm", "base": "bootstrap", "cache_dir": str(cache_dir)}, environ={}
    )


@pytest.fixture(scope="module")
def base(cfg: Config) -> BaseDisk:
    t0 = time.monotonic()
    disk = bootstrap_base(cfg, Progress())
    print(f"bootstrap base ready in {time.monotonic() - t0:.0f} s: {disk.path}")
    return disk


def boot_to_login(base: BaseDisk, work: Path, *, uefi: bool) -> tuple[float, str]:
    """Boot an overlay of ``base``; return (seconds to "login:", serial log text)."""
    work.mkdir(parents=True, exist_ok=True)
    overlay = work / "overlay.qcow2"
    run.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", base.format,
             "-b", base.path, overlay])  # fmt: skip
    log = work / "serial.log"
    argv: list[str | os.PathLike[str]] = [
        "qemu-system-x86_64", "-accel", "tcg", "-M", "q35", "-m", "1024", "-smp", "1",
        "-nographic", "-monitor", "none", "-serial", f"file:{log}",
        "-drive", f"file={overlay},format=qcow2,if=virtio",
        "-nic", "user,model=virtio-net-pci",
    ]  # fmt: skip
    if uefi:
        vars_copy = work / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        argv += [
            "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,file={vars_copy}",
        ]  # fmt: skip
    start = time.monotonic()
    with run.spawn(argv, stderr=subprocess.PIPE) as proc:
        while True:
            text = log.read_text(errors="replace") if log.exists() else ""
            if "login:" in text:
                return time.monotonic() - start, text
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"qemu exited {proc.returncode}: {err}\n--- serial ---\n{text[-3000:]}")
            if time.monotonic() - start > LOGIN_DEADLINE:
                pytest.fail(f"no login prompt in {LOGIN_DEADLINE:.0f} s\n{text[-3000:]}")
            time.sleep(1)


def test_base_is_a_small_qcow2_with_metadata(base: BaseDisk, cfg: Config) -> None:
    info = run.run(["qemu-img", "info", "--output=json", base.path]).stdout.decode()
    assert '"format": "qcow2"' in info and '"virtual-size": 3221225472' in info
    assert base.kind == "bootstrap" and base.kernel == "linux-image-amd64"
    assert base.sha256 == recipe(cfg).key
    assert base.date > 1_686_000_000  # bookworm's release date or later
    assert (base.path.parent / "meta.json").is_file()
    print(f"qcow2 size: {base.path.stat().st_size / 2**20:.0f} MiB")


def test_second_call_is_a_cache_hit(base: BaseDisk, cfg: Config) -> None:
    t0 = time.monotonic()
    again = bootstrap_base(cfg, Progress())
    assert time.monotonic() - t0 < 1.0
    assert again == base
    assert not list(base.path.parent.parent.glob(".tmp-*"))  # no build leftovers


@pytest.mark.parametrize("firmware", ["seabios", "ovmf"])
def test_boots_to_a_login_prompt(base: BaseDisk, tmp_path: Path, firmware: str) -> None:
    before = base.path.stat().st_mtime_ns
    seconds, text = boot_to_login(base, tmp_path, uefi=firmware == "ovmf")
    print(f"{firmware}: login prompt after {seconds:.0f} s (TCG)")
    assert "Debian GNU/Linux 12" in text
    assert "Failed to start" not in text, text[-3000:]
    assert base.path.stat().st_mtime_ns == before  # the overlay took every write
