"""The whole build, end to end, as `make image` runs it: bootstrap bookworm base,
TCG build VM, export, and `imagebuilder inspect` on the result."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vm, pytest.mark.root]


def test_make_image_equivalent(tmp_path: Path) -> None:
    out = tmp_path / "custom-cloudimg.tar.gz"
    script = tmp_path / "customize.sh"
    script.write_text("#!/bin/sh\nset -e\necho built-by-imagebuilder > /etc/imagebuilder-e2e\n")
    script.chmod(0o755)
    cache = os.environ["IMAGEBUILDER_TEST_CACHE"]
    argv = [
        sys.executable, "-m", "imagebuilder", "bookworm", "--base", "bootstrap",
        "--cache-dir", cache, "--customize", str(script), "-o", str(out),
        "--work-dir", str(tmp_path / "work"),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert out.is_file()
    manifest = Path(str(out) + ".manifest.json")
    assert manifest.is_file()
    assert (tmp_path / "SHA256SUMS").read_text().split()[1].lstrip("*") == out.name
    # Every stage was reported.
    for stage in ("base", "vm", "export"):
        assert f"==> {stage}" in proc.stderr

    inspect = subprocess.run(
        [sys.executable, "-m", "imagebuilder", "inspect", str(out)], capture_output=True, text=True
    )
    assert inspect.returncode == 0, inspect.stdout + inspect.stderr

    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        hook = tar.getmember("./curtin/curtin-hooks")
        assert hook.mode & 0o777 == 0o750 and hook.uid == 0 and hook.gid == 0
        custom = tar.extractfile("./etc/imagebuilder-e2e")
        assert custom is not None and custom.read() == b"built-by-imagebuilder\n"
        machine_id = tar.getmember("./etc/machine-id")
        assert machine_id.size == 0
    assert not any(n.startswith("./etc/ssh/ssh_host_") for n in names)
    assert "./etc/fstab" not in names
    assert not any("imagebuilder-build" in n for n in names)
    # Nothing of the build is left: no build directory, no process using it.
    assert list((tmp_path / "work").iterdir()) == []
    ps = subprocess.run(["pgrep", "-f", str(tmp_path / "work")], capture_output=True, text=True)
    assert ps.stdout.strip() == ""
