"""The deploy VM: MAAS's ephemeral environment, running the real curtin on a blank disk.

A Debian bootstrap base (cached, with curtin's Python dependencies and the block
tools curtin calls) boots through the same build-VM path as builds do (per-run
key, pinned host key), with a second, blank disk (serial
:data:`maasconfig.TARGET_SERIAL`) and a network with **no route anywhere**
(qemu ``restrict=on``): the only thing it reaches is the region stand-in, through a
``guestfwd`` at :data:`REGION_ADDRESS`, as an air-gapped MAAS site's machine
reaches only its rack and region. curtin is unpacked from the tarball
:mod:`curtinsrc` made and runs ``curtin install --config CFG SOURCE`` as root, as
MAAS's ephemeral environment does. On failure the one-line reason names curtin's
failing command (:func:`curtin_reason`); curtin's install log comes back either way.
This module does not boot the deployed disk.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..config.tree import Config
from ..errors import DeployError, ProvisionError, SSHError
from ..progress import Progress
from ..sources.basedisk import BaseDisk
from ..vm import provision, steps
from ..vm.ssh import BuildLog
from . import maasconfig

#: Where the guest reaches the region stand-in (a guestfwd address, nothing else routes).
REGION_ADDRESS = "10.0.2.100"
#: What the ephemeral environment needs besides the bootstrap base: curtin's Python
#: dependencies (its vendor README) and the programs its block and extract steps run.
PACKAGES = (
    "dosfstools", "efibootmgr", "fdisk", "file", "gdisk", "lshw", "lvm2", "parted", "python3-apt",
    "python3-attr", "python3-debian", "python3-jsonschema", "python3-oauthlib", "python3-packaging",
    "python3-pyudev", "python3-yaml", "wget", "xfsprogs",
)  # fmt: skip
CURTIN_DIR = "/opt/curtin"
PATH = f"{CURTIN_DIR}/curtin/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_COMMAND = re.compile(r"^\s*Command: (\[.*\])\s*$")
_EXIT = re.compile(r"^\s*Exit code: (\S+)")
_FAILED = re.compile(r"Installation failed with exception: (.*)$")
_PY_ERROR = re.compile(r"^\s*(\w+(?:Error|Exception): .*)$")
#: Reads the deployed root's cloud-init default user (for the SSH login after boot).
_READ_TARGET = (
    f"SERIAL = {maasconfig.TARGET_SERIAL!r}\n"
    + r"""
import glob, json, os, subprocess, tempfile
try:
    import yaml
except ImportError:
    yaml = None
dev = os.path.realpath("/dev/disk/by-id/virtio-" + SERIAL)
cands = sorted(glob.glob(dev + "[0-9]*")) + sorted(glob.glob("/dev/mapper/*-*"))
out = {"root": None, "default_user": None}
for part in cands:
    mnt = tempfile.mkdtemp()
    if subprocess.call(["mount", "-o", "ro", part, mnt], stderr=subprocess.DEVNULL):
        os.rmdir(mnt)
        continue
    try:
        cfg = os.path.join(mnt, "etc/cloud/cloud.cfg")
        if os.path.isfile(cfg):
            out["root"] = part
            data = yaml.safe_load(open(cfg)) if yaml else {}
            user = ((data or {}).get("system_info") or {}).get("default_user") or {}
            out["default_user"] = user.get("name")
            break
    finally:
        subprocess.call(["umount", mnt])
        os.rmdir(mnt)
print(json.dumps(out))
"""
)


@dataclass(frozen=True)
class Installed:
    """What the deploy left: the target's root device and cloud-init default user."""

    root: str | None
    default_user: str | None
    seconds: float


def curtin_reason(lines: list[str] | tuple[str, ...]) -> str:
    """One line from curtin's log: the command that failed first (the innermost; the
    error-tarfile collection after a failure runs commands of its own), or its exception."""
    command = exit_code = failed = python = ""
    for line in lines:
        if m := _PY_ERROR.match(line):
            python = m.group(1).strip()
        if not command and (m := _COMMAND.match(line)):  # the innermost: printed first
            command = m.group(1)
        elif command and not exit_code and (m := _EXIT.match(line)):
            exit_code = m.group(1)
        elif m := _FAILED.search(line):
            failed = m.group(1).strip()
    if command:
        return f"curtin's command {command} failed" + (f" (exit {exit_code})" if exit_code else "")
    if failed or python:
        return f"curtin failed: {failed or python}"
    return "curtin failed (no reason on its output)"


@contextlib.contextmanager
def deploy_vm(
    base: BaseDisk, cfg: Config, work: Path, progress: Progress, log: BuildLog, *,
    target: Path, mac: str, region_port: int,
) -> Iterator[steps.Session]:  # fmt: skip
    """Boot the ephemeral environment with ``target`` attached and only the region reachable."""
    fwd = f"cmd:busybox nc 127.0.0.1 {region_port}"
    changes = {
        "net_options": f",restrict=on,guestfwd=tcp:{REGION_ADDRESS}:80-{fwd}",
        "mac": mac,
        "name": f"imagebuilder-deploy-{cfg.machine.firmware.value}",
        "extra": (
            "-drive", f"if=none,id=target0,format=raw,file={target},cache=unsafe",
            "-device", f"virtio-blk-pci,drive=target0,serial={maasconfig.TARGET_SERIAL}",
        ),
    }  # fmt: skip
    try:
        with provision.build_vm(base, cfg, work, progress, log, spec_changes=changes) as s:
            with progress.stage("deploy-env", "cloud-init of the ephemeral environment"):
                steps.step_wait_cloud_init(s)
            yield s
    except (ProvisionError, SSHError) as exc:
        raise DeployError("deploy-vm", exc.message, hint=exc.hint, details=exc.details) from None


def install(
    s: steps.Session, *, curtin_tar: Path, config: str, source: str, logs: Path, kept: Path
) -> Installed:
    """Unpack curtin, write the config, run ``curtin install``; fetch its log either way.

    The logs go to ``logs`` (the work dir); ``kept`` is where they are kept, for the hint.
    """
    g = s.guest
    g.put_file(curtin_tar, "/tmp/curtin.tar.gz")
    g.put(config.encode(), "/tmp/maas-curtin.json")
    g.check(f"mkdir -p {CURTIN_DIR} && tar -xzf /tmp/curtin.tar.gz -C {CURTIN_DIR}")
    argv = ["curtin", "-v", "--showtrace", "install", "--config", "/tmp/maas-curtin.json", source]
    cmd = f"env PATH={PATH} {shlex.join(argv)}"
    start = time.monotonic()
    with s.progress.stage("curtin", f"curtin install {source.rsplit('/', 1)[-1]}"):
        result = g.run(cmd, tail=400)
    took = time.monotonic() - start
    text = g.run("cat /tmp/install.log", quiet=True, tail=100000)
    (logs / "curtin-install.log").write_text("\n".join(text.tail) + "\n")
    (logs / "curtin-output.log").write_text("\n".join(result.tail) + "\n")
    if result.status != 0:
        raise DeployError(
            "curtin",
            curtin_reason(list(text.tail) or list(result.tail)),
            hint=f"curtin's log: {kept / 'curtin-install.log'}",
            details="\n".join(result.tail[-25:]),
        )
    out = g.run(["python3", "-c", _READ_TARGET], quiet=True, tail=5)
    found: dict[str, str | None] = {}
    with contextlib.suppress(ValueError, IndexError):
        found = json.loads(out.tail[-1])
    return Installed(found.get("root"), found.get("default_user"), took)
