"""The provision recipe's pure parts: which steps run, proxies, kernels, the HTTP server."""

from __future__ import annotations

import contextlib
import re
import urllib.request
from pathlib import Path
from typing import Any, cast

import pytest

from imagebuilder.config.tree import Config, resolve
from imagebuilder.families import apt
from imagebuilder.progress import Progress
from imagebuilder.sources.basedisk import BaseDisk
from imagebuilder.vm import buildenv, httpserve, provision, seed, steps
from imagebuilder.vm.ssh import BuildLog
from tests.fakes.guest import FakeGuest


def _cfg(**opts: object) -> Config:
    return resolve({"series": "jammy", **opts}, environ={})


def _base(kind: str = "cloud", kernel: str | None = None) -> BaseDisk:
    return BaseDisk(Path("/b.img"), "qcow2", "0" * 64, "test", 0, kind, kernel)


def _names(base: BaseDisk, cfg: Config) -> list[str]:
    return [s.name for s in steps.plan(base, cfg)]


def test_ubuntu_cloud_image_plan(tmp_path: Path) -> None:
    cfg = _cfg()
    assert _names(_base(), cfg) == ["wait-cloud-init", "setup", "bootloaders", "hygiene"]
    assert steps.purges_kernel(_base(), cfg)
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\n")
    cfg = _cfg(customize=str(script), kernel="linux-generic-hwe-22.04")
    planned = steps.plan(_base(), cfg)
    assert [s.name for s in planned] == [
        "wait-cloud-init",
        "setup",
        "customize",
        "kernel",
        "bootloaders",
        "hygiene",
    ]
    assert planned[2].detail == "s.sh" and planned[3].detail == "linux-generic-hwe-22.04"
    assert not steps.purges_kernel(_base(), cfg)  # a kernel was asked for


def test_debian_keeps_its_kernel_and_names_it() -> None:
    cfg = _cfg(series="bookworm")
    assert not steps.purges_kernel(_base(), cfg)
    assert steps.kernel_package(_base(), cfg) == "linux-image-amd64"
    assert steps.kernel_package(_base("bootstrap", "linux-image-cloud-amd64"), cfg) == (
        "linux-image-cloud-amd64"
    )
    assert _names(_base(), cfg) == ["wait-cloud-init", "setup", "kernel", "bootloaders", "hygiene"]
    assert steps.kernel_package(
        _base(), _cfg(series="bookworm", kernel="linux-image-rt-amd64")
    ) == ("linux-image-rt-amd64")


def test_ubuntu_bootstrap_base_keeps_its_kernel() -> None:
    base = _base("bootstrap", "linux-generic")
    assert not steps.purges_kernel(base, _cfg())
    assert steps.kernel_package(base, _cfg()) == "linux-generic"


def test_guest_proxy_rewrites_host_loopback() -> None:
    assert buildenv.guest_proxy("http://127.0.0.1:3128") == "http://10.0.2.2:3128"
    assert buildenv.guest_proxy("http://u:p@localhost:8080/") == "http://u:p@10.0.2.2:8080/"
    assert buildenv.guest_proxy("proxy.example:3128") == "http://proxy.example:3128"
    assert buildenv.guest_proxy("http://squid.lan:3128") == "http://squid.lan:3128"


def test_proxy_env_and_apt_conf() -> None:
    assert buildenv.proxy_env(_cfg()) == {}
    env = buildenv.proxy_env(_cfg(http_proxy="http://127.0.0.1:3128", no_proxy="corp.lan"))
    assert env["http_proxy"] == env["HTTP_PROXY"] == "http://10.0.2.2:3128"
    assert "https_proxy" not in env
    # the guest fetches --http-dir files from 10.0.2.2 directly, never through the proxy
    assert env["no_proxy"].split(",") == ["corp.lan", "localhost", "127.0.0.1", "10.0.2.2"]
    conf = apt.proxy_conf(env)
    assert 'Acquire::http::Proxy "http://10.0.2.2:3128";' in conf
    assert "https" not in conf.split("\n", 1)[1]


def test_build_env_never_prompts() -> None:
    assert buildenv.build_env(_cfg()) == {"DEBIAN_FRONTEND": "noninteractive"}
    env = buildenv.build_env(_cfg(https_proxy="http://localhost:3128"))
    assert (
        env["DEBIAN_FRONTEND"] == "noninteractive" and env["https_proxy"] == "http://10.0.2.2:3128"
    )


def test_build_env_carries_the_outputs_epoch() -> None:
    env = buildenv.build_env(_cfg(), 1_700_000_000)
    assert env == {"DEBIAN_FRONTEND": "noninteractive", "SOURCE_DATE_EPOCH": "1700000000"}


def _session(tmp_path: Path, cfg: Config, guest: FakeGuest) -> steps.Session:
    return steps.Session(
        cfg, _base("bootstrap", "linux-image-amd64"), cast(Any, None), cast(Any, guest),
        BuildLog(tmp_path / "build.log"), Progress(), "tcg", 60.0, buildenv.build_env(cfg),
    )  # fmt: skip


@pytest.mark.parametrize("offline", [False, True])
def test_setup_updates_apt_only_online_and_records_the_boot(tmp_path: Path, offline: bool) -> None:
    guest = FakeGuest()
    s = _session(tmp_path, _cfg(series="bookworm", offline=offline), guest)
    steps.step_setup(s)
    s.log.close()
    assert s.first_boot == 1700000123
    updates = [c for c in guest.commands if "apt-get" in c and "update" in c]
    assert updates == ([] if offline else ["apt-get -o Acquire::Retries=3 update"])
    assert ("offline: no apt refresh" in (tmp_path / "build.log").read_text()) is offline


def test_size_bytes() -> None:
    assert provision.size_bytes("8G") == 8 << 30
    assert provision.size_bytes("20480M") == 20 << 30
    assert provision.size_bytes("1.5T") == 3 << 39
    assert provision.size_bytes("4096") == 4096
    with pytest.raises(ValueError):
        provision.size_bytes("eight")


def listening(port: int) -> list[str]:
    """IPv4 addresses with a TCP socket listening on ``port`` (from /proc/net/tcp)."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hexport = local.split(":")
        if state == "0A" and int(hexport, 16) == port:
            found.append(".".join(str(b) for b in reversed(bytes.fromhex(addr))))
    return found


def test_http_server_is_loopback_only_and_closes(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("payload")
    lines: list[str] = []
    with httpserve.serve(tmp_path, log=lines.append) as port:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{port}/f.txt", timeout=5) as resp:
            assert resp.read() == b"payload"
        assert listening(port) == ["127.0.0.1"]
    assert listening(port) == []
    assert any("GET /f.txt" in ln for ln in lines)
    assert httpserve.guest_url(port) == f"http://10.0.2.2:{port}/"


def test_hygiene_script_is_valid_sh() -> None:
    import subprocess

    script = seed.SEEDS_DIR / "hygiene.sh"
    subprocess.run(["sh", "-n", script], check=True)
    text = script.read_text()
    for must in ("cloud-init clean --logs --machine-id", ": > /etc/machine-id", "ssh_host_*",
                 "userdel --force --remove", "90-cloud-init-users", "/var/lib/apt/lists/*",
                 "50-cloud-init.yaml", "systemctl poweroff"):  # fmt: skip
        assert must in text


@pytest.mark.vm
def test_a_guest_that_never_comes_up_fails_with_its_console(tmp_path: Path) -> None:
    """The whole VM path on a disk that boots but never runs sshd (the accel probe payload)."""
    from imagebuilder.errors import MachineError
    from imagebuilder.progress import Progress
    from imagebuilder.vm import accel

    disk = tmp_path / "payload.img"
    disk.write_bytes(accel.boot_sector())
    with open(disk, "r+b") as fh:
        fh.truncate(1 << 20)
    base = BaseDisk(disk, "raw", "0" * 64, "test", 0, "cloud")
    cfg = _cfg(series="bookworm", accel="tcg", firmware="bios", timeout="4", memory="64",
               cache_dir=str(tmp_path / "cache"), http_dir=str(tmp_path))  # fmt: skip
    build_dir = tmp_path / "vm"
    build_dir.mkdir()
    with pytest.raises(MachineError, match="no SSH login to the build VM within 4 s") as err:
        provision.provision(base, cfg, build_dir, Progress())
    assert "RPLTBM" in err.value.details  # the serial console's last lines
    left = sorted(p.name for p in build_dir.iterdir())
    assert left == ["build.log", "disk.qcow2", "qemu.log", "serial.log"]
    text = (build_dir / "build.log").read_text()
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", text)]
    assert len(set(ports)) == 2 and all(listening(p) == [] for p in ports)
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            assert str(build_dir) not in (proc / "cmdline").read_text(errors="replace")
