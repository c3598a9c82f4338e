"""The installer-image hooks (curtin_hooks/installer/), run as curtin runs them.

``curtin-hooks`` is executed through its shebang with a fake ``curtin`` package on
PYTHONPATH that records every built-in step and every command run in the target.
``setup-bootloader`` and ``install-custom-packages`` run for real under ``sh`` with
fake grub/dpkg/apt tools first on PATH that record their arguments.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.export.curtin import BUILTIN_DIR
from tests.fakes.tree import CURTIN_UTIL_COMMON, write_tree

HOOKS = BUILTIN_DIR / "installer"
BUILTINS = [
    "do_apt_config",
    "disable_overlayroot",
    "install_missing_packages",
    "configure_iscsi",
    "configure_mdadm",
    "add_swap",
    "apply_networking",
    "copy_fstab",
    "detect_and_handle_multipath",
    "handle_cloudconfig",
    "copy_dname_rules",
    "update_initramfs",
]

FAKE_CURTIN = {
    "curtin/__init__.py": "",
    "curtin/commands/__init__.py": "",
    "curtin/util.py": """
import json, os

def _record(step, **data):
    with open(os.environ["RECORD"], "a") as f:
        f.write(json.dumps({"step": step, **data}) + "\\n")

"""
    + CURTIN_UTIL_COMMON
    + """
class ChrootableTarget:
    def __init__(self, target, **kw):
        self.target = target
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return False
    def subp(self, args, **kw):
        _record("chroot", argv=list(args), target=self.target)
        if os.environ.get("FAIL_CHROOT") and args[0].endswith(os.environ["FAIL_CHROOT"]):
            raise RuntimeError("simulated failure in " + args[0])
""",
    "curtin/config.py": """
import json

def load_command_config(args, state):
    with open(state["config"]) as f:
        return json.load(f)
""",
    "curtin/commands/curthooks.py": "from curtin.util import _record\n"
    + "".join(
        f"def {name}(*args, **kwargs):\n    _record({name!r}, args=[str(a) for a in args])\n"
        for name in BUILTINS
    ),
}


@pytest.fixture
def fake_curtin(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "lib", FAKE_CURTIN)


def run_hook(
    tmp_path: Path,
    lib: Path,
    cfg: dict[str, Any],
    *,
    packages: bool = False,
    fail: str | None = None,
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]], Path]:
    target = tmp_path / "target"
    (target / "curtin").mkdir(parents=True)
    for f in HOOKS.iterdir():
        (target / "curtin" / f.name).write_bytes(f.read_bytes())
        (target / "curtin" / f.name).chmod(0o750)
    if packages:
        (target / "curtin/custom-packages.tar.gz").write_bytes(b"tgz")
    (tmp_path / "scratch/rules.d").mkdir(parents=True)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cfg))
    record = tmp_path / "record.jsonl"
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHONPATH": os.fspath(lib),
        "TARGET_MOUNT_POINT": os.fspath(target),
        "CONFIG": os.fspath(config),
        "OUTPUT_FSTAB": os.fspath(tmp_path / "state/fstab"),
        "WORKING_DIR": os.fspath(tmp_path / "scratch"),
        "RECORD": os.fspath(record),
        **({"FAIL_CHROOT": fail} if fail else {}),
    }
    hook = target / "curtin/curtin-hooks"
    proc = subprocess.run([os.fspath(hook)], env=env, capture_output=True, text=True)
    steps = [json.loads(ln) for ln in record.read_text().splitlines()] if record.exists() else []
    return proc, steps, target


def test_hook_files_are_executable_and_shebanged() -> None:
    assert sorted(p.name for p in HOOKS.iterdir()) == [
        "curtin-hooks",
        "install-custom-packages",
        "setup-bootloader",
    ]
    for p in HOOKS.iterdir():
        assert os.access(p, os.X_OK), p
        first = p.read_text().splitlines()[0]
        assert first == ("#!/usr/bin/env python3" if p.name == "curtin-hooks" else "#!/bin/sh")


def test_flat_tarball_runs_the_subset_then_packages_initramfs_and_bootloader(
    tmp_path: Path, fake_curtin: Path
) -> None:
    cfg = {
        "sources": {"00": {"type": "tgz", "uri": "http://x/root.tgz"}},
        "cloudconfig": {"maas": {"content": "#cloud-config\n"}},
        "grub": {"install_devices": ["/dev/vda"]},
    }
    proc, steps, target = run_hook(tmp_path, fake_curtin, cfg, packages=True)
    assert proc.returncode == 0, proc.stderr
    assert [s["step"] for s in steps] == [
        "do_apt_config", "disable_overlayroot", "install_missing_packages", "configure_iscsi",
        "configure_mdadm", "add_swap", "apply_networking", "copy_fstab",
        "detect_and_handle_multipath", "handle_cloudconfig", "copy_dname_rules", "chroot",
        "update_initramfs", "chroot",
    ]  # fmt: skip
    chroots = [s["argv"] for s in steps if s["step"] == "chroot"]
    assert chroots == [
        ["/curtin/install-custom-packages", "/curtin/custom-packages.tar.gz"],
        ["/curtin/setup-bootloader", "/dev/vda"],
    ]
    iscsi = next(s for s in steps if s["step"] == "configure_iscsi")
    assert iscsi["args"][1] == os.fspath(tmp_path / "state")  # the state etc dir
    assert not (target / "curtin").exists()


def test_dd_image_skips_fstab_swap_storage_services_and_grub(
    tmp_path: Path, fake_curtin: Path
) -> None:
    cfg = {"sources": {"00": {"type": "dd-gz", "uri": "http://x/disk.dd.gz"}}}
    proc, steps, target = run_hook(tmp_path, fake_curtin, cfg)
    assert proc.returncode == 0, proc.stderr
    names = [s["step"] for s in steps]
    assert names == [
        "do_apt_config", "disable_overlayroot", "apply_networking", "copy_dname_rules",
        "update_initramfs",
    ]  # fmt: skip
    for skipped in ("copy_fstab", "add_swap", "configure_iscsi", "configure_mdadm", "chroot"):
        assert skipped not in names
    assert not (target / "curtin").exists()


def test_dd_image_still_installs_custom_packages(tmp_path: Path, fake_curtin: Path) -> None:
    cfg = {"sources": {"00": {"type": "dd-xz", "uri": "http://x/disk.dd.xz"}}}
    proc, steps, _ = run_hook(tmp_path, fake_curtin, cfg, packages=True)
    assert proc.returncode == 0, proc.stderr
    assert [s["argv"][0] for s in steps if s["step"] == "chroot"] == [
        "/curtin/install-custom-packages"
    ]


def test_bootloader_failure_fails_the_deploy(tmp_path: Path, fake_curtin: Path) -> None:
    proc, steps, target = run_hook(tmp_path, fake_curtin, {}, fail="setup-bootloader")
    assert proc.returncode != 0
    assert "simulated failure in /curtin/setup-bootloader" in proc.stderr
    assert steps[-1]["step"] == "chroot"
    assert (target / "curtin").exists()  # nothing pretends the deploy went well


# ---- the shell scripts, with fake tools -----------------------------------------------------


def fake_tools(bin_dir: Path, log: Path, scripts: dict[str, str]) -> dict[str, str]:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in scripts.items():
        p = bin_dir / name
        p.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n{body}\n')
        p.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "LC_ALL": "C.UTF-8"}


def test_setup_bootloader_bios_finds_the_root_disk_through_lvm(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    env = fake_tools(
        tmp_path / "bin",
        log,
        {
            "dpkg": "echo amd64",
            "findmnt": "echo /dev/mapper/vg-root",
            "lsblk": "printf '/dev/mapper/vg-root lvm\\n/dev/sda3 part\\n/dev/sda disk\\n'",
            "grub-install": "exit 0",
            "update-grub": "exit 0",
        },
    )
    env["SETUP_BOOTLOADER_EFI_DIR"] = os.fspath(tmp_path / "no-efi")
    proc = subprocess.run(
        ["sh", HOOKS / "setup-bootloader"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert "grub-install --target=i386-pc --recheck /dev/sda" in calls
    assert calls[-1] == "update-grub "


def test_setup_bootloader_uefi_needs_the_esp_mounted(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    (tmp_path / "efi").mkdir()
    tools = {"dpkg": "echo arm64", "grub-install": "exit 0", "update-grub": "exit 0"}
    env = fake_tools(tmp_path / "bin", log, {**tools, "mountpoint": "exit 1"})
    env["SETUP_BOOTLOADER_EFI_DIR"] = os.fspath(tmp_path / "efi")
    script = ["sh", os.fspath(HOOKS / "setup-bootloader")]
    proc = subprocess.run(script, env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "/boot/efi is not mounted" in proc.stderr
    env = fake_tools(tmp_path / "bin", log, {**tools, "mountpoint": "exit 0"})
    env["SETUP_BOOTLOADER_EFI_DIR"] = os.fspath(tmp_path / "efi")
    proc = subprocess.run(script, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert any(
        c.startswith("grub-install --target=arm64-efi --efi-directory=/boot/efi")
        for c in log.read_text().splitlines()
    )


def _debs_tar(path: Path, names: list[str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for n in [*names, "README"]:
            info = tarfile.TarInfo(n)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"deb"))
    return path


@pytest.mark.parametrize("installed", [True, False])
def test_install_custom_packages_installs_every_deb_and_checks(
    tmp_path: Path, installed: bool
) -> None:
    log = tmp_path / "calls"
    tarball = _debs_tar(tmp_path / "p.tar.gz", ["b_1.0_all.deb", "a_2.0_amd64.deb"])
    status = "install ok installed" if installed else "install ok unpacked"
    env = fake_tools(
        tmp_path / "bin",
        log,
        {
            "dpkg": "exit 1",  # missing dependencies: apt-get -f must complete them
            "apt-get": "exit 0",
            "dpkg-deb": 'basename "$2" | cut -d_ -f1',
            "dpkg-query": f"printf '{status}'",
        },
    )
    env["TMPDIR"] = os.fspath(tmp_path)
    proc = subprocess.run(
        ["sh", HOOKS / "install-custom-packages", tarball], env=env, capture_output=True, text=True
    )
    calls = log.read_text().splitlines()
    (dpkg,) = [c for c in calls if c.startswith("dpkg -i")]
    assert [Path(p).name for p in dpkg.split()[2:]] == ["a_2.0_amd64.deb", "b_1.0_all.deb"]
    assert "apt-get -y -f install" in calls
    if installed:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == 1
        assert "a is not installed (install ok unpacked)" in proc.stderr
