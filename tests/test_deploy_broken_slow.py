"""Three broken images, each deployed by the real curtin on a BIOS machine: each must
fail with its own one-line reason (``imagebuilder test``'s exit 1 and its message).

The images are ``make image``'s tgz with one thing broken, re-packed with GNU tar:
no /curtin (curtin's own hooks must then fetch grub-pc and ``linux-generic``, which
Debian has not; nothing is reachable), a curtin hook that exits 1, and no cloud-init
(MAAS's late command runs ``cloud-init --version`` in the target).
Slow: ~5 minutes per deploy under TCG.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.root, pytest.mark.slow]

VENDOR_CURTIN = Path(__file__).resolve().parents[2] / "shared/vendor/curtin-23.1.1-737e305.tar.gz"


def _imagebuilder(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "imagebuilder", *args,
            "--cache-dir", os.environ["IMAGEBUILDER_TEST_CACHE"]]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=3600)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not VENDOR_CURTIN.exists():
        pytest.skip(f"{VENDOR_CURTIN} not beside the checkout")
    out = tmp_path_factory.mktemp("broken") / "good.tar.gz"
    proc = _imagebuilder("bookworm", "--base", "bootstrap", "-o", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _cut(good: Path, out: Path, *delete: str, add: Path | None = None) -> Path:
    """``good`` without the paths ``delete`` (relative), plus ``add``'s tree; re-packed
    with GNU tar as root (owners, modes and xattrs kept; GNU tar's --delete cannot edit
    archives with pax sparse members)."""
    tree = out.with_suffix(".d")
    tree.mkdir()
    xattrs = ["--xattrs", "--xattrs-include=*", "--numeric-owner"]
    subprocess.run(["tar", "-xzpf", good, "-C", tree, *xattrs], check=True)
    for rel in delete:
        path = tree / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if add is not None:
        shutil.copytree(add, tree, dirs_exist_ok=True, symlinks=True)
    subprocess.run(["tar", "-cf", out.with_suffix(""), "-C", tree, *xattrs, "."], check=True)
    shutil.rmtree(tree)
    subprocess.run(["gzip", "-1", "-f", out.with_suffix("")], check=True)
    return out


def _deploy(image: Path) -> subprocess.CompletedProcess[str]:
    return _imagebuilder("test", str(image), "--firmware", "bios", "--curtin", str(VENDOR_CURTIN))


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("imagebuilder: error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return errors[0]


def test_a_debian_image_without_curtin_hooks_fails_on_what_curtin_must_fetch(
    made: Path, tmp_path: Path
) -> None:
    line = _one_line(_deploy(_cut(made, tmp_path / "nohooks.tar.gz", "curtin")))
    # curtin's own hooks must fetch grub-pc (then linux-generic): nothing is reachable.
    assert "'install'" in line and ("'grub-pc'" in line or "linux-generic" in line)


def test_a_hook_that_exits_1_fails_naming_the_hook(made: Path, tmp_path: Path) -> None:
    add = tmp_path / "add"
    (add / "curtin").mkdir(parents=True)
    (add / "curtin/curtin-hooks").write_text("#!/bin/sh\nexit 1\n")
    (add / "curtin/curtin-hooks").chmod(0o750)
    image = _cut(made, tmp_path / "exit1.tar.gz", "curtin/curtin-hooks", add=add)
    line = _one_line(_deploy(image))
    assert "curtin/curtin-hooks" in line and "exit 1" in line


def test_an_image_without_cloud_init_fails_in_the_late_command(made: Path, tmp_path: Path) -> None:
    image = _cut(made, tmp_path / "nocloudinit.tar.gz", "usr/bin/cloud-init")
    line = _one_line(_deploy(image))
    assert "cloud-init" in line
