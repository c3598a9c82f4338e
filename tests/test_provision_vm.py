"""The build VM for real: boot the bootstrap base under qemu, customise it, check the disk.

One provisioned VM is shared by the acceptance checks (``--accel auto``, a customize
script that installs a Debian package, fetches an --http-dir file and reboots, a
build proxy on the host, hygiene checked on the powered-off disk through a
read-only loop mount). Further tests cover a failing customize script and
SIGINT/SIGTERM during the VM stage, run in a subprocess like the CLI. The base
comes from ``bootstrap.bootstrap_base`` with ``$IMAGEBUILDER_TEST_CACHE`` (or a
pytest temp dir) as the cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from imagebuilder import run
from imagebuilder.config.tree import Config, resolve
from imagebuilder.families import apt
from imagebuilder.progress import Event, Progress
from imagebuilder.sources.basedisk import BaseDisk
from imagebuilder.vm import provision

pytestmark = [pytest.mark.vm, pytest.mark.root]

LINUX_FS = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


# ---- helpers ----------------------------------------------------------------------------


def listening(port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if text in cmd and str(os.getpid()) != proc.name:
                found.append(f"{proc.name}: {cmd[:200]}")
    return found


def ports_from_log(build_log: Path) -> list[int]:
    """The SSH forward and HTTP server ports a build used, from its build.log."""
    import re

    text = build_log.read_text()
    ports = [int(p) for p in re.findall(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-:22", text)]
    ports += [int(p) for p in re.findall(r"http: serving .* on 127\.0\.0\.1:(\d+)", text)]
    return ports


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, ev: Event) -> None:
        self.events.append(ev)

    def of(self, kind: str) -> list[str]:
        return [e.name for e in self.events if e.kind == kind]


class _Proxy(BaseHTTPRequestHandler):
    """A forward HTTP proxy good enough for apt (absolute-URI GET/HEAD)."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[str]] = []
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._relay(body=True)

    def do_HEAD(self) -> None:
        self._relay(body=False)

    def _relay(self, *, body: bool) -> None:
        type(self).seen.append(self.path)
        keep = ("range", "if-modified-since", "if-none-match", "user-agent", "accept")
        headers = {k: v for k, v in self.headers.items() if k.lower() in keep}
        req = urllib.request.Request(self.path, method=self.command, headers=headers)
        try:
            with self.opener.open(req, timeout=120) as resp:
                status, rheaders, data = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as exc:
            status, rheaders, data = exc.code, exc.headers, exc.read()
        self.send_response(status)
        for k in ("Content-Type", "Last-Modified", "ETag", "Content-Range"):
            if k in rheaders:
                self.send_header(k, rheaders[k])
        self.send_header("Content-Length", "0" if status == 304 else str(len(data)))
        self.end_headers()
        if body and status != 304:
            self.wfile.write(data)


@contextlib.contextmanager
def http_proxy() -> Iterator[tuple[int, list[str]]]:
    seen: list[str] = []
    handler = type("Proxy", (_Proxy,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1]), seen
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def mounted_root(disk: Path, work: Path) -> Iterator[Path]:
    """The disk's root filesystem, read-only, from a raw copy (the disk is not touched)."""
    raw = work / "disk.raw"
    run.run(["qemu-img", "convert", "-O", "raw", disk, raw])
    table = json.loads(run.run(["sfdisk", "--json", raw]).stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    part = max(
        (p for p in table["partitions"] if p["type"].upper() == LINUX_FS), key=lambda p: p["size"]
    )
    offset, size = str(part["start"] * sector), str(part["size"] * sector)
    loop = run.run(["losetup", "-f", "--show", "-r", "-o", offset, "--sizelimit", size, raw])
    dev = loop.stdout.decode().strip()
    mnt = work / "root"
    mnt.mkdir(exist_ok=True)
    try:
        run.run(["mount", "-o", "ro,noload", dev, mnt])
        try:
            yield mnt
        finally:
            run.run(["umount", mnt])
    finally:
        run.run(["losetup", "-d", dev])
        raw.unlink()


def _config(cache: Path, **opts: Any) -> Config:
    return resolve(
        {"series": "bookworm", "base": "bootstrap", "cache_dir": str(cache), **opts}, environ={}
    )


# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("IMAGEBUILDER_TEST_CACHE")
    return Path(env) if env else tmp_path_factory.getbasetemp() / "imagebuilder-cache"


@pytest.fixture(scope="session")
def base(cache_dir: Path) -> BaseDisk:
    from imagebuilder.base.bootstrap import bootstrap_base

    return bootstrap_base(_config(cache_dir), Progress())


CUSTOMIZE = """#!/bin/sh
set -eux
# the guest reaches the Debian mirror itself, through qemu's NAT (no proxy)
curl --noproxy '*' -fsS -o /dev/null http://deb.debian.org/debian/dists/bookworm/Release
apt-get install -y --no-install-recommends hello
curl -fsS "${IMAGEBUILDER_HTTP}greeting.txt" -o /root/greeting.txt
mkdir -p /var/lib/imagebuilder-test
cat /proc/sys/kernel/random/boot_id > /var/lib/imagebuilder-test/boot-id-before-reboot
echo "$IMAGEBUILDER_HTTP" > /var/lib/imagebuilder-test/http-url
systemctl reboot
sleep 300
"""


@dataclass
class Built:
    disk: Path
    build_dir: Path
    root: Path
    rec: Recorder
    greeting: str
    proxied: list[str]
    proxy_url: str
    seconds: float


@pytest.fixture(scope="module")
def built(
    base: BaseDisk, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Built]:
    work = tmp_path_factory.mktemp("provision")
    http = work / "http"
    http.mkdir()
    greeting = f"hello from the host {secrets.token_hex(8)}\n"
    (http / "greeting.txt").write_text(greeting)
    script = work / "customize.sh"
    script.write_text(CUSTOMIZE)
    script.chmod(0o755)
    build_dir = work / "vm"
    build_dir.mkdir()
    rec = Recorder()
    with http_proxy() as (proxy_port, seen):
        proxy_url = f"http://127.0.0.1:{proxy_port}"
        cfg = _config(
            cache_dir,
            accel="auto",
            firmware="bios",
            customize=str(script),
            http_dir=str(http),
            http_proxy=proxy_url,
        )
        start = time.monotonic()
        disk = provision.provision(base, cfg, build_dir, Progress(rec))
        seconds = time.monotonic() - start
    with mounted_root(disk, work) as root:
        yield Built(disk, build_dir, root, rec, greeting, list(seen), proxy_url, seconds)


# ---- the shared build ----------------------------------------------------------------------


def test_build_returns_an_overlay_and_cleans_up(built: Built, base: BaseDisk) -> None:
    assert built.disk == built.build_dir / "disk.qcow2"
    info = json.loads(run.run(["qemu-img", "info", "--output=json", built.disk]).stdout)
    assert Path(info["backing-filename"]) == base.path.resolve()
    assert info["virtual-size"] == 8 << 30
    left = sorted(p.name for p in built.build_dir.iterdir())
    assert left == ["build.log", "disk.qcow2", "qemu.log", "serial.log"]
    assert processes_mentioning(str(built.build_dir)) == []
    assert all(not listening(p) for p in ports_from_log(built.build_dir / "build.log"))
    assert "Power down" in (built.build_dir / "serial.log").read_text(errors="replace")
    print(f"provision took {built.seconds:.0f} s")


def test_steps_are_named_timed_and_logged(built: Built) -> None:
    ends = [e for e in built.rec.events if e.kind == "stage-end"]
    names = [e.name for e in ends]
    for step in ("boot", "wait-cloud-init", "setup", "customize", "kernel", "hygiene", "poweroff"):
        assert step in names
    assert all(e.data["ok"] for e in ends)
    log = (built.build_dir / "build.log").read_text()
    for step in ("wait-cloud-init", "setup", "customize", "kernel", "hygiene"):
        assert f"==> step {step}" in log
    assert "| Setting up hello" in log  # command output is streamed into the log
    timings = {e.name: e.data["seconds"] for e in ends}
    print("stage seconds:", timings)


def test_auto_accel_completes_and_warns_once_about_kvm(built: Built) -> None:
    log = (built.build_dir / "build.log").read_text()
    chosen = "tcg" if " -accel tcg " in log else "kvm"
    fallbacks = [w for w in built.rec.of("warning") if "falling back to TCG" in w]
    kvm_present = os.path.exists("/dev/kvm")
    assert len(fallbacks) == (1 if chosen == "tcg" and kvm_present else 0), fallbacks


def test_customize_rebooted_and_came_back(built: Built) -> None:
    assert any("rebooted the VM" in i for i in built.rec.of("info"))
    log = (built.build_dir / "build.log").read_text()
    assert "guest back after the reboot" in log
    before = (built.root / "var/lib/imagebuilder-test/boot-id-before-reboot").read_text().strip()
    assert len(before) == 36


def test_disk_holds_the_package_and_the_http_file(built: Built) -> None:
    root = built.root
    assert (root / "usr/bin/hello").is_file()
    status = (root / "var/lib/dpkg/status").read_text()
    assert "Package: hello\nStatus: install ok installed" in status
    assert (root / "root/greeting.txt").read_text() == built.greeting
    url = (root / "var/lib/imagebuilder-test/http-url").read_text().strip()
    assert url.startswith("http://10.0.2.2:") and url.endswith("/")
    assert (root / "curtin/CUSTOM_KERNEL").read_text() == "linux-image-amd64\n"
    assert list((root / "boot").glob("vmlinuz-*")), "a Debian base keeps its kernel"


def test_apt_went_through_the_build_proxy(built: Built) -> None:
    assert any("deb.debian.org" in u and "InRelease" in u for u in built.proxied)
    assert any(u.endswith(".deb") and "/hello_" in u for u in built.proxied)


def test_disk_is_clean(built: Built) -> None:
    root = built.root
    user = provision.BUILD_USER
    for f in ("etc/passwd", "etc/shadow", "etc/group", "etc/gshadow", "etc/subuid"):
        if (root / f).exists():
            assert user not in (root / f).read_text(), f
    assert not (root / "home" / user).exists()
    assert not (root / "etc/sudoers.d/90-cloud-init-users").exists()
    assert not list((root / "etc/ssh").glob("ssh_host_*"))
    assert not (root / "root/.ssh/authorized_keys").exists()
    assert not (root / "var/lib/cloud/instance").exists()
    assert not (root / "var/lib/cloud/instances").exists()
    assert not list((root / "var/log").glob("cloud-init*"))
    machine_id = root / "etc/machine-id"
    assert machine_id.exists() and machine_id.stat().st_size == 0
    assert not (root / apt.PROXY_FILE.lstrip("/")).exists()
    assert not (root / "etc/fstab").exists()
    assert not (root / "etc/netplan/50-cloud-init.yaml").exists()
    assert [p.name for p in (root / "var/lib/apt/lists").iterdir() if p.is_file()] == []
    assert not list((root / "var/cache/apt/archives").glob("*.deb"))
    # what would differ between two builds of the same inputs
    for f in ("etc/passwd-", "etc/shadow-", "etc/group-", "etc/gshadow-", "etc/subuid-"):
        if (root / f).exists():
            assert user not in (root / f).read_text(), f
    for f in ("var/lib/systemd/random-seed", "etc/.updated", "var/.updated",
              "var/cache/ldconfig/aux-cache", "var/log/dpkg.log", "var/log/apt/history.log",
              "var/lib/dpkg/status-old"):  # fmt: skip
        assert not (root / f).exists(), f
    for d in ("var/log/journal", "var/lib/systemd/timers", "tmp", "var/tmp"):
        assert not list((root / d).glob("*")), d
    assert (root / "var/log/wtmp").stat().st_size == 0
    port = built.proxy_url.rsplit(":", 1)[1]
    found = subprocess.run(
        ["grep", "-rlsE", f"(10\\.0\\.2\\.2|127\\.0\\.0\\.1):{port}", root / "etc", root / "root",
         root / "home", root / "var/log", root / "var/lib/cloud"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert found.stdout == "", f"proxy config left in {found.stdout}"


def test_no_build_key_anywhere_on_the_disk(built: Built) -> None:
    log = (built.build_dir / "build.log").read_text()
    assert "BEGIN OPENSSH PRIVATE KEY" not in log
    # the keys are gone with the build; find any ed25519 key in the places they were written
    found = subprocess.run(
        ["grep", "-rlsE", "imagebuilder-(build|host)@", built.root / "etc", built.root / "root",
         built.root / "home", built.root / "var/lib", built.root / "var/log"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert found.stdout == "", found.stdout


# ---- failures and interruptions ---------------------------------------------------------------


DRIVER = """
import json, shutil, signal, sys, tempfile
from pathlib import Path
from imagebuilder.config.tree import resolve
from imagebuilder.sources.basedisk import BaseDisk
from imagebuilder.vm import provision
from imagebuilder.errors import ImageBuilderError
from imagebuilder.progress import PlainRenderer, Progress

def terminated(signum, frame):
    raise KeyboardInterrupt()

signal.signal(signal.SIGTERM, terminated)
mode, parent = sys.argv[1], sys.argv[2]
opts, base = json.loads(sys.argv[3]), json.loads(sys.argv[4])
base["path"] = Path(base["path"])
cfg, disk = resolve(opts, environ={}), BaseDisk(**base)
build_dir = Path(tempfile.mkdtemp(prefix="imagebuilder-", dir=parent))
print(f"BUILD_DIR={build_dir}", flush=True)
rc = 0
try:
    progress = Progress(PlainRenderer(sys.stdout))
    if mode == "shell":
        status = provision.shell(disk, cfg, build_dir, progress)
        print(f"SHELL_STATUS={status}", flush=True)
    else:
        provision.provision(disk, cfg, build_dir, progress, debug_shell=mode == "debug-shell")
except ImageBuilderError as exc:
    print(f"ERROR={json.dumps([type(exc).__name__, exc.message, exc.details])}", flush=True)
    rc = exc.exit_code
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
    rc = 130
finally:
    shutil.rmtree(build_dir, ignore_errors=True)
sys.exit(rc)
"""


@contextlib.contextmanager
def driver(
    mode: str, base: BaseDisk, cfg: dict[str, Any], parent: Path
) -> Iterator[tuple[subprocess.Popen[bytes], queue.Queue[str]]]:
    script = parent / "driver.py"
    script.write_text(DRIVER)
    base_json = json.dumps({**base.__dict__, "path": str(base.path)})
    proc = subprocess.Popen(
        [sys.executable, script, mode, parent / "builds", json.dumps(cfg), base_json],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        buf = b""
        while chunk := proc.stdout.read1(4096):  # type: ignore[attr-defined]
            buf += chunk
            *done, buf = buf.split(b"\n")
            for ln in done:
                lines.put(ln.decode(errors="replace"))

    threading.Thread(target=pump, daemon=True).start()
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(lines: queue.Queue[str], needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"{needle!r} not seen in {timeout} s; output:\n" + "\n".join(seen[-30:]))


def wait_file(path: Path, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if needle in text:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} not in {path} after {timeout} s")


def _assert_all_gone(build_dir: Path, ports: list[int], parent: Path, tmp_before: set[str]) -> None:
    assert processes_mentioning(str(build_dir)) == []
    assert ports and not any(listening(p) for p in ports)
    assert not build_dir.exists() and list((parent / "builds").iterdir()) == []
    new_tmp = {
        p for p in os.listdir("/tmp") if p.startswith(("imagebuilder-probe-", "ib-"))
    } - tmp_before
    assert new_tmp == set()


def _tmp_now() -> set[str]:
    return {p for p in os.listdir("/tmp") if p.startswith(("imagebuilder-probe-", "ib-"))}


FAILING = "#!/bin/sh\nfor i in $(seq 1 40); do echo line $i; done\necho to stderr >&2\nexit 7\n"


def test_sigint_while_booting_leaves_nothing(
    base: BaseDisk, cache_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "builds").mkdir()
    before = _tmp_now()
    opts = {"series": "bookworm", "base": "bootstrap", "cache_dir": str(cache_dir), "accel": "tcg",
            "http_dir": str(tmp_path)}  # fmt: skip
    with driver("shell", base, opts, tmp_path) as (proc, lines):
        build_dir = Path(wait_for(lines, "BUILD_DIR=", 60).split("=", 1)[1])
        wait_file(build_dir / "build.log", "qemu:", 60)
        wait_file(build_dir / "serial.log", "BdsDxe", 60)  # OVMF is running
        ports = ports_from_log(build_dir / "build.log")
        assert len(ports) == 2 and all(listening(p) for p in ports)
        assert processes_mentioning(str(build_dir))  # qemu is running
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        wait_for(lines, "INTERRUPTED", 5)
    _assert_all_gone(build_dir, ports, tmp_path, before)


def test_failing_customize_with_debug_shell(
    base: BaseDisk, cache_dir: Path, tmp_path: Path
) -> None:
    """Exit code and both tails on screen, a shell on the failed VM, then exit 1, nothing left."""
    (tmp_path / "builds").mkdir()
    script = tmp_path / "fail.sh"
    script.write_text(FAILING)
    script.chmod(0o755)
    before = _tmp_now()
    opts = {"series": "bookworm", "base": "bootstrap", "cache_dir": str(cache_dir), "accel": "tcg",
            "http_dir": str(tmp_path), "customize": str(script)}  # fmt: skip
    with driver("debug-shell", base, opts, tmp_path) as (proc, lines):
        build_dir = Path(wait_for(lines, "BUILD_DIR=", 60).split("=", 1)[1])
        wait_file(build_dir / "build.log", "ssh ready", 900)
        ports = ports_from_log(build_dir / "build.log")
        warning = wait_for(lines, "opening a shell on the build VM", 900)
        assert "customize script fail.sh failed with exit code 7" in warning
        details = [wait_for(lines, "| ", 5).split("| ", 1)[1] for _ in range(32)]
        assert details[:31] == (
            ["last lines of its output:"] + [f"line {i}" for i in range(12, 41)] + ["to stderr"]
        )
        assert details[31] == "last lines of the serial console:"
        assert proc.stdin is not None
        proc.stdin.write(b"echo marker-$((6*7)) $(id -un)\nexit\n")
        proc.stdin.flush()
        line = wait_for(lines, "marker-42", 120)  # the interactive shell on the failed VM
        assert provision.BUILD_USER in line
        error = json.loads(wait_for(lines, "ERROR=", 120).split("=", 1)[1])
        assert proc.wait(timeout=60) == 1
    kind, message, detail = error
    assert kind == "ProvisionError" and "exit code 7" in message
    output, serial = detail.split("last lines of the serial console:\n")
    assert output.splitlines()[-30:] == [f"line {i}" for i in range(12, 41)] + ["to stderr"]
    assert 0 < len(serial.strip().splitlines()) <= 30
    _assert_all_gone(build_dir, ports, tmp_path, before)


def test_sigterm_during_a_guest_command_leaves_nothing(
    base: BaseDisk, cache_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "builds").mkdir()
    before = _tmp_now()
    opts = {"series": "bookworm", "base": "bootstrap", "cache_dir": str(cache_dir), "accel": "tcg",
            "firmware": "bios", "http_dir": str(tmp_path)}  # fmt: skip
    with driver("build", base, opts, tmp_path) as (proc, lines):
        build_dir = Path(wait_for(lines, "BUILD_DIR=", 60).split("=", 1)[1])
        wait_file(build_dir / "build.log", "==> step wait-cloud-init", 900)
        ports = ports_from_log(build_dir / "build.log")
        assert len(ports) == 2 and all(listening(p) for p in ports)
        time.sleep(1)  # inside `cloud-init status --wait` over SSH
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
        wait_for(lines, "INTERRUPTED", 5)
    _assert_all_gone(build_dir, ports, tmp_path, before)
