"""seeds/hygiene.sh's file-only parts, run by sh against a tree laid out like an image.

The script runs them one by one with ``IB_ONLY="<part> ..."`` and every path under
``IB_ROOT``; the parts that need the guest's services (apt, cloud-init, userdel,
systemctl) are covered by the VM tests.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from imagebuilder.vm.seed import SEEDS_DIR

LOOPBACK_ONLY = "auto lo\niface lo inet loopback\n"
DI_INTERFACES = """\
# This file describes the network interfaces available on your system
source /etc/network/interfaces.d/*

# The loopback network interface
auto lo
iface lo inet loopback

# The primary network interface
allow-hotplug ens3
iface ens3 inet dhcp
"""


def hygiene(root: Path, *parts: str, since: int = 0) -> str:
    env = {"PATH": os.environ["PATH"], "IB_ROOT": str(root), "IB_ONLY": " ".join(parts),
           "IB_SINCE": str(since)}  # fmt: skip
    proc = subprocess.run(
        ["sh", SEEDS_DIR / "hygiene.sh"], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def put(root: Path, rel: str, text: str = "x\n", mtime: int | None = None) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_only_parts_refuse_to_run_without_a_tree() -> None:
    proc = subprocess.run(
        ["sh", SEEDS_DIR / "hygiene.sh"],
        env={"PATH": os.environ["PATH"], "IB_ONLY": "run_state"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0 and "set IB_ROOT" in proc.stderr


def test_every_part_is_harmless_on_an_empty_tree(tmp_path: Path) -> None:
    hygiene(tmp_path, "installer_leftovers", "run_state", "python_caches", "logs")
    assert list(tmp_path.iterdir()) == []


def test_installer_leftovers_go(tmp_path: Path) -> None:
    gone = [
        "etc/netplan/00-installer-config.yaml",
        "etc/netplan/00-installer-config-wifi.yaml",
        "etc/cloud/cloud.cfg.d/99-installer.cfg",
        "etc/cloud/cloud.cfg.d/subiquity-disable-cloudinit-networking.cfg",
        "etc/cloud/cloud.cfg.d/90-installer-network.cfg",
        "var/log/installer/autoinstall-user-data",
        "etc/network/interfaces.d/ens3",
    ]
    kept = ["etc/netplan/60-mine.yaml", "etc/cloud/cloud.cfg.d/05_logging.cfg",
            "etc/network/interfaces.d/comments-only"]  # fmt: skip
    for rel in gone + kept:
        put(tmp_path, rel)
    put(tmp_path, "etc/network/interfaces.d/ens3", "auto ens3\niface ens3 inet dhcp\n")
    put(tmp_path, "etc/network/interfaces.d/comments-only", "# nothing\n")
    put(tmp_path, "etc/network/interfaces", DI_INTERFACES)
    hygiene(tmp_path, "installer_leftovers")
    assert [rel for rel in gone if (tmp_path / rel).exists()] == []
    assert [rel for rel in kept if not (tmp_path / rel).exists()] == []
    assert not (tmp_path / "var/log/installer").exists()
    eni = (tmp_path / "etc/network/interfaces").read_text()
    assert eni.endswith("auto lo\niface lo inet loopback\n") and "ens3" not in eni
    assert "source /etc/network/interfaces.d/*" in eni


@pytest.mark.parametrize(
    "text", [LOOPBACK_ONLY, "# comments only\n", "auto lo\niface lo inet6 loopback\n"]
)
def test_a_loopback_only_interfaces_file_is_left_alone(tmp_path: Path, text: str) -> None:
    put(tmp_path, "etc/network/interfaces", text)
    mine = put(tmp_path, "etc/network/interfaces.d/br0", "auto br0\niface br0 inet dhcp\n")
    hygiene(tmp_path, "installer_leftovers")
    assert (tmp_path / "etc/network/interfaces").read_text() == text
    assert mine.exists()  # not the installer's: its interfaces file was loopback only


def test_run_state_removes_what_differs_between_builds(tmp_path: Path) -> None:
    gone = ["var/lib/systemd/random-seed", "var/lib/systemd/credential.secret",
            "var/lib/systemd/timesync/clock", "etc/.updated", "var/.updated",
            "var/cache/ldconfig/aux-cache", "var/lib/logrotate/status",
            "var/lib/apt/daily_lock", "var/cache/debconf/config.dat-old",
            "var/cache/debconf/templates.dat-old", "var/lib/dpkg/status-old",
            "var/lib/dhcp/dhclient.ens3.leases", "var/lib/systemd/timers/stamp-fstrim.timer",
            "var/lib/apt/periodic/update-success-stamp", "var/cache/man/index.db",
            "var/backups/dpkg.status.0", "var/tmp/build-scratch", "tmp/x/y",
            "etc/subuid-"]  # fmt: skip
    kept = ["var/cache/debconf/config.dat", "var/lib/dpkg/status", "var/lib/dhcp/README",
            "tmp/systemd-private-abc-chronyd.service-x/tmp/f"]  # fmt: skip
    for rel in gone + kept:
        put(tmp_path, rel)
    put(tmp_path, "etc/passwd", "root:x:0:0:root:/root:/bin/bash\n")
    put(tmp_path, "etc/passwd-", "root:x:0:0::/root:/bin/bash\nimagebuilder-build:x:1000:\n")
    shadow_backup = put(tmp_path, "etc/shadow-", "imagebuilder-build:!:1::::::\n")
    put(tmp_path, "etc/shadow", "root:*:1::::::\n")
    shadow_backup.chmod(0o600)
    hygiene(tmp_path, "run_state")
    assert [rel for rel in gone if (tmp_path / rel).exists()] == []
    assert [rel for rel in kept if not (tmp_path / rel).exists()] == []
    for d in ("var/lib/systemd/timers", "var/cache/man", "var/backups", "var/tmp", "tmp"):
        assert (tmp_path / d).is_dir()
    assert (tmp_path / "etc/passwd-").read_text() == (tmp_path / "etc/passwd").read_text()
    assert (tmp_path / "etc/shadow-").read_text() == "root:*:1::::::\n"
    assert shadow_backup.stat().st_mode & 0o777 == 0o600  # the backup keeps its own mode


def test_python_caches_written_during_the_build_go(tmp_path: Path) -> None:
    since = 1_700_000_000
    old = put(tmp_path, "usr/lib/python3/dist-packages/__pycache__/six.cpython-311.pyc",
              mtime=since - 3600)  # fmt: skip
    new = put(tmp_path, "usr/lib/python3/dist-packages/__pycache__/new.cpython-311.pyc",
              mtime=since + 10)  # fmt: skip
    fresh_dir = tmp_path / "usr/lib/python3/dist-packages/fresh/__pycache__"
    fresh = put(tmp_path, str(fresh_dir.relative_to(tmp_path) / "m.cpython-311.pyc"))
    source = put(tmp_path, "usr/lib/python3/dist-packages/fresh/m.py")  # not byte-code: stays
    out = hygiene(tmp_path, "python_caches", since=since)
    assert old.exists() and source.exists()
    assert not new.exists() and not fresh.exists() and not fresh_dir.exists()
    assert "removed 2 .pyc files" in out


def test_logs_are_emptied_and_the_journal_goes(tmp_path: Path) -> None:
    put(tmp_path, "var/log/journal/0123abcd/system.journal")
    put(tmp_path, "var/log/journal/0123abcd/user-1000.journal")
    gone = ["var/log/dpkg.log", "var/log/alternatives.log", "var/log/apt/history.log",
            "var/log/apt/term.log", "var/log/apt/eipp.log.xz", "var/log/cloud-init.log",
            "var/log/cloud-init-output.log", "var/log/syslog.1", "var/log/syslog.2.gz",
            "var/log/installer/syslog"]  # fmt: skip
    emptied = ["var/log/wtmp", "var/log/lastlog", "var/log/btmp", "var/log/syslog",
               "var/log/nginx/access.log"]  # fmt: skip
    for rel in gone + emptied:
        put(tmp_path, rel, "a line\n")
    (tmp_path / "var/log/wtmp").chmod(0o664)
    hygiene(tmp_path, "installer_leftovers", "logs")
    assert [rel for rel in gone if (tmp_path / rel).exists()] == []
    assert [rel for rel in emptied if (tmp_path / rel).stat().st_size] == []
    assert (tmp_path / "var/log/wtmp").stat().st_mode & 0o777 == 0o664
    assert list((tmp_path / "var/log/journal").iterdir()) == []
