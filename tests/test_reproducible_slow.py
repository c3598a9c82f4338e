"""Acceptance for reproducible, air-gapped builds (issue 8): real bootstrap builds in TCG.

1. Two builds of the bootstrap bookworm image with the same lock and a
   deterministic customize script, one after the other, give a byte-identical
   ``custom-cloudimg.tar.gz`` and ``imagebuilder diff`` finds nothing.
2. An ``--offline --locked`` build inside a network namespace with no route
   succeeds from a bundle imported into an empty cache.

Each build boots a VM under TCG (minutes). The base disk is shared through
``$IMAGEBUILDER_TEST_CACHE`` (bootstrapped once, ~2 min, if missing).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from imagebuilder import pipeline
from imagebuilder.config.tree import Config, resolve
from imagebuilder.errors import ConfigError
from imagebuilder.progress import PlainRenderer, Progress
from imagebuilder.repro import bundle_create, lock, lock_check
from imagebuilder.repro.diff_outputs import diff_outputs, render

pytestmark = [pytest.mark.slow, pytest.mark.vm, pytest.mark.root]

ROOT = Path(__file__).resolve().parent.parent
#: Deterministic: fixed content, no network, no time, no randomness.
CUSTOMIZE = """\
#!/bin/sh
set -eu
printf 'built by imagebuilder, reproducibly\\n' > /etc/imagebuilder-repro
mkdir -p /opt/repro
printf '42\\n' > /opt/repro/answer
chmod 0640 /opt/repro/answer
ln -sf /opt/repro/answer /usr/local/bin/answer
"""


def shared_cache() -> Path:
    return Path(os.environ["IMAGEBUILDER_TEST_CACHE"])


def progress() -> Progress:
    return Progress(PlainRenderer())


def config(out: Path, script: Path, **values: Any) -> Config:
    base = {
        "series": "bookworm",
        "base": "bootstrap",
        "cache_dir": str(shared_cache()),
        "customize": str(script),
        "output": str(out),
        "timeout": 900,
    }
    return resolve({**base, **values}, environ={})


@pytest.fixture
def script(tmp_path: Path) -> Path:
    p = tmp_path / "customize.sh"
    p.write_text(CUSTOMIZE)
    p.chmod(0o755)
    return p


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def locked_build(cfg: Config, lk: lock.Lock) -> pipeline.BuildResult:
    """What ``imagebuilder bookworm --locked`` does: check, pin, build, check the base."""
    return pipeline.build(cfg, progress=progress(), lock=lk)


def test_versions_resolved_from_the_mirror_are_what_bootstrap_installs(tmp_path: Path) -> None:
    """apt's simulation (no VM, no root) against the real mirror names exactly the packages
    and versions mmdebstrap installed on the cached base (if the mirror has not moved on)."""
    cfg = resolve(
        {"series": "bookworm", "base": "bootstrap", "cache_dir": str(shared_cache())}, environ={}
    )
    base = pipeline.get_base(cfg, progress())
    from_disk = lock.resolve_lock(cfg, progress())
    again = {
        "series": "bookworm",
        "base": "bootstrap",
        "cache_dir": str(shared_cache()),
        "refresh": True,
    }
    from_mirror = lock.resolve_lock(resolve(again, environ={}), progress())
    assert from_disk.bootstrap is not None and from_mirror.bootstrap is not None
    assert from_disk.bootstrap.resolved_from.startswith("base disk")
    assert from_mirror.bootstrap.resolved_from.startswith("apt indexes")
    assert len(from_disk.bootstrap.packages) > 200
    assert (
        lock_check.compare_versions(from_mirror.bootstrap.packages, from_disk.bootstrap.packages)
        == []
    )
    lock_check.check_base(base, from_mirror)


def test_check_mirror_refuses_a_lock_the_mirror_no_longer_serves(tmp_path: Path) -> None:
    """No cached base: a locked build asks apt first instead of bootstrapping for 2 min."""
    cfg = resolve(
        {"series": "bookworm", "base": "bootstrap", "cache_dir": str(tmp_path)}, environ={}
    )
    lk = lock.resolve_lock(cfg, progress())
    assert lk.bootstrap is not None and lk.bootstrap.resolved_from.startswith("apt indexes")
    lock_check.check_mirror(cfg, lk, progress())
    old = dict(lk.bootstrap.packages, libc6="2.36-9+deb12u1")
    stale = dataclasses.replace(lk, bootstrap=dataclasses.replace(lk.bootstrap, packages=old))
    with pytest.raises(ConfigError) as info:
        lock_check.check_mirror(cfg, stale, progress())
    assert f"libc6 2.36-9+deb12u1 -> {lk.bootstrap.packages['libc6']}" in info.value.message
    assert not (tmp_path / "bootstrap").exists()


def test_two_locked_bootstrap_builds_are_byte_identical(tmp_path: Path, script: Path) -> None:
    a, b = tmp_path / "a" / "custom-cloudimg.tar.gz", tmp_path / "b" / "custom-cloudimg.tar.gz"
    lk = lock.resolve_lock(config(a, script), progress())
    lock.write_lock(lk, tmp_path / "imagebuilder.lock")
    a.parent.mkdir()
    b.parent.mkdir()
    first = locked_build(config(a, script), lk)
    second = locked_build(config(b, script), lk)
    assert first.output == a and second.output == b
    diffs = diff_outputs(a, b)
    assert render(diffs) == "", render(diffs)
    assert first.sha256 == second.sha256 == sha256(a) == sha256(b)


CHILD = """
import json, sys
from pathlib import Path
from imagebuilder import cli
from imagebuilder.repro import bundle_import
from imagebuilder.progress import Progress
from imagebuilder.run import run

bundle_path, cache_dir, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
run(["ip", "link", "set", "lo", "up"])  # loopback only: qemu's ssh forward; no route out
res = bundle_import.import_bundle(bundle_path, cache_dir, progress=Progress())
code = cli.main(["bookworm", "--base", "bootstrap", "--offline", "--locked",
                 "--lock", str(res.lock_path), "--cache-dir", str(cache_dir),
                 "--customize", str(res.customize), "-o", str(out), "--timeout", "900"])
print(json.dumps({"code": code}))
"""


def test_offline_locked_build_in_a_network_namespace_from_a_bundle(
    tmp_path: Path, script: Path
) -> None:
    online = config(tmp_path / "unused.tar.gz", script)
    pipeline.get_base(online, progress())  # the connected host has the base cached
    lk = lock.resolve_lock(online, progress())
    made = bundle_create.create_bundle(
        online, lk, tmp_path / "bookworm.tar.zst", progress=progress()
    )
    out = tmp_path / "airgapped" / "custom-cloudimg.tar.gz"
    out.parent.mkdir()
    proc = subprocess.run(
        [
            "unshare",
            "--net",
            "--",
            sys.executable,
            "-c",
            textwrap.dedent(CHILD),
            str(made.path),
            str(tmp_path / "empty-cache"),
            str(out),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=3600,
        check=False,
    )
    log = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, log[-4000:]
    assert json.loads(proc.stdout.decode().strip().splitlines()[-1]) == {"code": 0}, log[-4000:]
    assert out.is_file() and out.stat().st_size > 50 << 20
