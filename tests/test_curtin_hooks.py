"""The cloud-image hook (curtin_hooks/curtin-hooks), run as curtin runs it.

curtin executes ``$TARGET/curtin/curtin-hooks`` with no arguments, outside the
target, with ``PYTHONPATH`` pointing at its own package and the environment of
``curtin.util.load_command_environment``. Here a fake ``curtin`` package on
PYTHONPATH records the config each hook step receives; the hook itself is the
real file, executed through its shebang.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.export.curtin import BUILTIN_DIR, HOOK
from tests.fakes.tree import CURTIN_UTIL_COMMON, write_tree

FAKE_CURTIN = {
    "curtin/__init__.py": "",
    "curtin/commands/__init__.py": "",
    "curtin/util.py": """
import json, os

def is_uefi_bootable():
    return os.environ.get("FAKE_UEFI") == "1"

class ChrootableTarget:
    def __init__(self, target):
        self.target = target
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return False
    def subp(self, args, data=None, env=None, **kwargs):
        with open(os.environ["RECORD"], "a") as f:
            f.write(json.dumps({"step": "chroot", "argv": args, "target": self.target,
                                "data": data.decode() if data else None,
                                "frontend": (env or {}).get("DEBIAN_FRONTEND")}) + "\\n")
        return "", ""

"""
    + CURTIN_UTIL_COMMON,
    "curtin/distro.py": """
import os

def get_installed_packages(target=None):
    try:
        with open(os.path.join(target, "var/lib/dpkg/status")) as f:
            text = f.read()
    except OSError:
        return set()
    found = set()
    for stanza in text.split("\\n\\n"):
        fields = dict(l.split(": ", 1) for l in stanza.splitlines() if ": " in l)
        if fields.get("Status") == "install ok installed":
            found.add(fields["Package"])
    return found
""",
    "curtin/config.py": """
import json

def load_command_config(args, state):
    with open(state["config"]) as f:
        return json.load(f)
""",
    "curtin/commands/curthooks.py": """
import json, os

def _record(step, **data):
    with open(os.environ["RECORD"], "a") as f:
        f.write(json.dumps({"step": step, **data}) + "\\n")

def builtin_curthooks(cfg, target, state):
    assert os.path.isdir(os.path.join(target, "curtin")), "hook ran after /curtin was removed"
    _record("builtin_curthooks", cfg=cfg, target=target)
    if cfg.get("fail"):
        raise RuntimeError("simulated failure")

def disable_overlayroot(cfg, target):
    _record("disable_overlayroot")

def handle_cloudconfig(cfg, base_dir=None):
    _record("handle_cloudconfig", cfg=cfg, base_dir=base_dir)

def apply_networking(target, state):
    _record("apply_networking")

def copy_dname_rules(rules_d, target):
    _record("copy_dname_rules")
""",
}

DPKG_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


@pytest.fixture
def fake_curtin(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "lib", FAKE_CURTIN)


def run_hook(
    tmp_path: Path,
    lib: Path,
    cfg: dict[str, Any],
    *,
    distro: str = "ubuntu",
    pin: str | None = None,
    uefi: bool = False,
    packages: tuple[str, ...] = (),
    debs: tuple[str, ...] = (),
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]], Path]:
    target = tmp_path / "target"
    (target / "curtin").mkdir(parents=True)
    if packages:
        status = target / "var/lib/dpkg/status"
        status.parent.mkdir(parents=True)
        status.write_text(
            "".join(f"Package: {p}\nStatus: install ok installed\nArchitecture: amd64\n\n"
                    for p in ("dpkg", *packages))
        )  # fmt: skip
    for deb in debs:
        (target / "curtin/debs").mkdir(exist_ok=True)
        (target / "curtin/debs" / deb).write_bytes(b"!<arch>\n")
    (target / "etc").mkdir()
    (target / "etc/os-release").write_text(f'NAME="x"\nID={distro}\n')
    hook = target / "curtin" / HOOK
    hook.write_bytes((BUILTIN_DIR / HOOK).read_bytes())
    hook.chmod(0o750)
    if pin is not None:
        (target / "curtin/CUSTOM_KERNEL").write_text(pin + "\n")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(cfg))
    record = tmp_path / "record.jsonl"
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "PYTHONPATH": os.fspath(lib),
        "TARGET_MOUNT_POINT": os.fspath(target),
        "CONFIG": os.fspath(config),
        "OUTPUT_FSTAB": os.fspath(tmp_path / "fstab"),
        "WORKING_DIR": os.fspath(tmp_path / "scratch"),
        "RECORD": os.fspath(record),
        "FAKE_UEFI": "1" if uefi else "0",
    }
    # Executed directly, through its shebang, as curtin's subp([hook]) does.
    proc = subprocess.run([os.fspath(hook)], env=env, capture_output=True, text=True)
    steps = [json.loads(ln) for ln in record.read_text().splitlines()] if record.exists() else []
    return proc, steps, target


def test_hook_is_executable_python3() -> None:
    hook = BUILTIN_DIR / HOOK
    assert hook.read_text().startswith("#!/usr/bin/env python3\n")
    assert os.access(hook, os.X_OK)


def test_ubuntu_tar_runs_builtin_hooks_unchanged_and_removes_curtin(
    tmp_path: Path, fake_curtin: Path
) -> None:
    cfg = {"sources": {"00": {"type": "tgz", "uri": "http://x/root.tgz"}}, "apt": {"a": 1}}
    proc, steps, target = run_hook(tmp_path, fake_curtin, cfg)
    assert proc.returncode == 0, proc.stderr
    assert [s["step"] for s in steps] == ["builtin_curthooks"]
    assert steps[0]["cfg"] == cfg  # no kernel forced on Ubuntu without a pin
    assert steps[0]["target"] == os.fspath(target)
    assert not (target / "curtin").exists()


def test_custom_kernel_pin_sets_kernel_package(tmp_path: Path, fake_curtin: Path) -> None:
    cfg = {"kernel": {"fallback_package": "linux-generic"}}
    proc, steps, _ = run_hook(tmp_path, fake_curtin, cfg, pin="linux-image-6.1.0-custom")
    assert proc.returncode == 0, proc.stderr
    assert steps[0]["cfg"]["kernel"] == {
        "fallback_package": "linux-generic",
        "package": "linux-image-6.1.0-custom",
    }


def test_debian_without_pin_gets_linux_image_arch(tmp_path: Path, fake_curtin: Path) -> None:
    proc, steps, _ = run_hook(tmp_path, fake_curtin, {}, distro="debian")
    assert proc.returncode == 0, proc.stderr
    arch = DPKG_ARCH.get(platform.machine(), platform.machine())
    assert steps[0]["cfg"]["kernel"] == {"package": f"linux-image-{arch}"}


def test_debian_kernel_follows_the_targets_dpkg_arch(tmp_path: Path, fake_curtin: Path) -> None:
    status = tmp_path / "target/var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text(
        "Package: base-files\nStatus: install ok installed\nArchitecture: arm64\n\n"
        "Package: dpkg\nStatus: install ok installed\nArchitecture: arm64\n"
        "Description: Debian package management system\n This package provides dpkg.\n\n"
    )
    proc, steps, _ = run_hook(tmp_path, fake_curtin, {}, distro="debian")
    assert proc.returncode == 0, proc.stderr
    assert steps[0]["cfg"]["kernel"] == {"package": "linux-image-arm64"}  # on any host


def test_debian_pin_wins_over_default(tmp_path: Path, fake_curtin: Path) -> None:
    proc, steps, _ = run_hook(
        tmp_path, fake_curtin, {}, distro="debian", pin="linux-image-rt-amd64"
    )
    assert proc.returncode == 0, proc.stderr
    assert steps[0]["cfg"]["kernel"]["package"] == "linux-image-rt-amd64"


def test_preseed_kernel_package_is_kept_on_debian(tmp_path: Path, fake_curtin: Path) -> None:
    cfg = {"kernel": {"package": "linux-image-cloud-amd64"}}
    proc, steps, _ = run_hook(tmp_path, fake_curtin, cfg, distro="debian")
    assert proc.returncode == 0, proc.stderr
    assert steps[0]["cfg"]["kernel"] == {"package": "linux-image-cloud-amd64"}


def test_kernel_null_without_pin_installs_no_kernel(tmp_path: Path, fake_curtin: Path) -> None:
    proc, steps, _ = run_hook(tmp_path, fake_curtin, {"kernel": None}, distro="debian")
    assert proc.returncode == 0, proc.stderr
    assert steps[0]["cfg"]["kernel"] is None


def test_dd_image_skips_fstab_grub_and_kernel_steps(tmp_path: Path, fake_curtin: Path) -> None:
    cfg = {
        "sources": {"00": {"type": "dd-gz", "uri": "http://x/disk.dd.gz"}},
        "cloudconfig": {"maas-datasource": {"content": "#cloud-config\n"}},
    }
    proc, steps, target = run_hook(tmp_path, fake_curtin, cfg, pin="linux-image-amd64")
    assert proc.returncode == 0, proc.stderr
    names = [s["step"] for s in steps]
    assert "builtin_curthooks" not in names
    assert names == ["disable_overlayroot", "handle_cloudconfig", "apply_networking"]
    assert steps[1]["base_dir"] == os.fspath(target / "etc/cloud/cloud.cfg.d")
    assert not (target / "curtin").exists()


def test_failure_exits_non_zero(tmp_path: Path, fake_curtin: Path) -> None:
    proc, steps, _ = run_hook(tmp_path, fake_curtin, {"fail": True})
    assert proc.returncode != 0
    assert "simulated failure" in proc.stderr
    assert [s["step"] for s in steps] == ["builtin_curthooks"]


GRUB_PC_DEB = "grub-pc_2.06-13+deb12u2_amd64.deb"
EFI_IMAGE = ("grub-efi-amd64", "grub-efi-amd64-bin", "grub-pc-bin", "shim-signed")


def test_bios_deploy_installs_grub_pc_offline_from_curtin_debs(
    tmp_path: Path, fake_curtin: Path
) -> None:
    proc, steps, target = run_hook(
        tmp_path, fake_curtin, {}, distro="debian", packages=EFI_IMAGE, debs=(GRUB_PC_DEB,)
    )
    assert proc.returncode == 0, proc.stderr
    chroot = [s for s in steps if s["step"] == "chroot"]
    assert [c["argv"] for c in chroot] == [
        ["debconf-set-selections"],
        ["dpkg", "--remove", "grub-efi-amd64"],
        ["dpkg", "--install", f"/curtin/debs/{GRUB_PC_DEB}"],
    ]
    assert "grub-pc/install_devices multiselect \n" in chroot[0]["data"]
    assert "install_devices_empty boolean true" in chroot[0]["data"]
    assert {c["frontend"] for c in chroot[1:]} == {"noninteractive"}
    assert [s["step"] for s in steps][-1] == "builtin_curthooks"  # after, so it finds grub-pc
    assert not (target / "curtin").exists()


def test_uefi_deploy_of_an_efi_image_installs_nothing(tmp_path: Path, fake_curtin: Path) -> None:
    proc, steps, _ = run_hook(
        tmp_path, fake_curtin, {}, distro="debian", uefi=True, packages=EFI_IMAGE,
        debs=(GRUB_PC_DEB,),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [s["step"] for s in steps] == ["builtin_curthooks"]


def test_uefi_deploy_of_a_bios_image_swaps_in_grub_efi(tmp_path: Path, fake_curtin: Path) -> None:
    deb = "grub-efi-amd64_2.12-1ubuntu7_amd64.deb"
    proc, steps, _ = run_hook(
        tmp_path, fake_curtin, {}, uefi=True, packages=("grub-pc", "grub-efi-amd64-bin"),
        debs=(deb,),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [s["argv"] for s in steps if s["step"] == "chroot"] == [
        ["dpkg", "--remove", "grub-pc"],
        ["dpkg", "--install", f"/curtin/debs/{deb}"],
    ]


def test_without_the_deb_the_hook_says_curtin_will_fetch_it(
    tmp_path: Path, fake_curtin: Path
) -> None:
    proc, steps, _ = run_hook(tmp_path, fake_curtin, {}, distro="debian", packages=EFI_IMAGE)
    assert proc.returncode == 0, proc.stderr
    assert "grub-pc is not in the image and not in /curtin/debs" in proc.stderr
    assert [s["step"] for s in steps] == ["builtin_curthooks"]
