"""The build VM recipe: boot the base, run the named steps over SSH, power off clean.

``provision()`` makes ``disk.qcow2`` (an overlay backed by the cached base,
resized), a per-build seed ISO and keys, picks the accelerator, boots qemu, waits
for SSH and runs the steps of :func:`plan` (wait-cloud-init, setup, customize,
kernel, hygiene), each named, timed and logged to ``build.log``; the serial
console is always in ``serial.log``. Whatever happens (errors, Ctrl-C, SIGTERM
turned into KeyboardInterrupt), qemu, the HTTP server and the seed/firmware/key
files are gone when it returns. ``shell()`` boots the same way for a person.
This module decides what runs in the guest; it does not read the finished disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shlex
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .. import run
from ..config.tree import DD_TYPES, Config
from ..errors import MachineError, ProvisionError, SSHError
from ..progress import Progress
from ..sources.basedisk import BaseDisk
from . import httpserve, qemu
from .keys import BuildKeys
from .seed import SEEDS_DIR, write_seed
from .ssh import BuildLog, Disconnected, Guest

BUILD_USER = "imagebuilder-build"
REMOTE_SCRIPT = f"/home/{BUILD_USER}/customize"
LOOPBACK = ("localhost", "127.0.0.1", "::1")


@dataclass
class Session:
    """What the steps work with: the config, the running VM and the SSH session."""

    cfg: Config
    base: BaseDisk
    machine: qemu.Machine
    guest: Guest
    log: BuildLog
    progress: Progress
    accel: str
    timeout: float  # boot / cloud-init deadline
    env: dict[str, str] = field(default_factory=dict)  # for every root command (proxies)
    http_url: str | None = None
    first_boot: int | None = None  # the guest's boot time (epoch s) when setup ran

    def fail(self, message: str, output: str, hint: str | None = None) -> ProvisionError:
        details = f"last lines of its output:\n{output or '(none)'}\n"
        details += f"last lines of the serial console:\n{self.machine.serial_tail() or '(none)'}"
        return ProvisionError(message, hint=hint or f"see {self.log.path}", details=details)

    def root(self, what: str, command: str) -> None:
        """Run a root shell snippet with the build env; ProvisionError on failure."""
        result = self.guest.run(command, env=self.env)
        if result.status != 0:
            raise self.fail(
                f"{what} failed in the build VM (exit {result.status})", result.tail_text()
            )


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Session], None]
    detail: str = ""


# ---- proxies ------------------------------------------------------------------------


def guest_proxy(url: str) -> str:
    """The proxy URL as the guest must use it: host loopback becomes 10.0.2.2."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.hostname in LOOPBACK:
        netloc = httpserve.GUEST_HOST_ADDRESS + (f":{parts.port}" if parts.port else "")
        if parts.username:
            cred = parts.username + (f":{parts.password}" if parts.password else "")
            netloc = f"{cred}@{netloc}"
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


def build_env(cfg: Config, epoch: int | None = None) -> dict[str, str]:
    """The environment of every root command in the build: no prompts, the build proxies,
    and ``SOURCE_DATE_EPOCH`` (the outputs' epoch) for the tools that honour it
    (initramfs-tools, python's byte-compiler, mtools...), so what they write is the same
    in every build."""
    env = {**cfg.release.family.packages.env, **proxy_env(cfg)}
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(epoch)
    return env


def proxy_env(cfg: Config) -> dict[str, str]:
    p = cfg.provision
    env: dict[str, str] = {}
    for name, value in (("http_proxy", p.http_proxy), ("https_proxy", p.https_proxy)):
        if value:
            env[name] = env[name.upper()] = guest_proxy(value)
    if env:
        hosts = [h for h in (p.no_proxy or "").split(",") if h.strip()]
        hosts += [
            h for h in ("localhost", "127.0.0.1", httpserve.GUEST_HOST_ADDRESS) if h not in hosts
        ]
        env["no_proxy"] = env["NO_PROXY"] = ",".join(hosts)
    return env


# ---- the steps --------------------------------------------------------------------------


def step_wait_cloud_init(s: Session) -> None:
    t = int(s.timeout)
    wait = f"timeout {t} cloud-init status --wait >/dev/null; rc=$?"
    result = s.guest.run(f"{wait}; cloud-init status --long; exit $rc")
    if result.status == 2:
        s.progress.warning("cloud-init finished with recoverable errors (degraded); continuing")
    elif result.status == 124:
        raise s.fail(
            f"cloud-init did not finish within {t} s", result.tail_text(), "raise --timeout"
        )
    elif result.status != 0:
        raise s.fail(
            f"cloud-init failed in the build VM (exit {result.status})", result.tail_text()
        )


def write_proxy_file(s: Session) -> None:
    """The package manager's proxy settings for the build (hygiene removes the file)."""
    if any(k in s.env for k in ("http_proxy", "https_proxy")):
        pm = s.cfg.release.family.packages
        q = shlex.quote(pm.proxy_file)
        conf = pm.proxy_conf(s.env).encode()
        result = s.guest.run(f"cat > {q} && chmod 644 {q}", input=conf)
        if result.status != 0:
            raise s.fail(f"writing the {pm.name} proxy file failed", result.tail_text())


def record_first_boot(s: Session) -> None:
    """When this boot began: hygiene removes byte-code written since then."""
    btime = s.guest.output("awk '/^btime/ {print $2}' /proc/stat")
    if btime.isdigit():
        s.first_boot = int(btime)


def step_setup(s: Session) -> None:
    record_first_boot(s)
    write_proxy_file(s)
    pm = s.cfg.release.family.packages
    if s.cfg.source.offline:
        s.log.write(f"offline: no {pm.name} refresh (it works from what the image has)")
    else:
        s.root(f"{pm.name} refresh", pm.refresh)
    if purges_kernel(s.base, s.cfg):
        s.root("purging the cloud image's kernel", pm.remove_kernels)


def step_customize(s: Session) -> None:
    script = s.cfg.provision.customize
    assert script is not None
    s.guest.put(script.read_bytes(), REMOTE_SCRIPT, mode=0o755)
    boot_id = s.guest.boot_id()
    env = dict(s.env, IMAGEBUILDER_SERIES=s.cfg.series, IMAGEBUILDER_ARCH=s.cfg.arch)
    if s.http_url:
        env["IMAGEBUILDER_HTTP"] = s.http_url
    cmd = f"cd /root && exec {shlex.quote(REMOTE_SCRIPT)}"
    status: int | None  # None: the connection dropped (the script rebooted the VM?)
    try:
        result = s.guest.run(cmd, env=env)
        status, tail = result.status, result.tail_text()
    except Disconnected as exc:
        status, tail = None, exc.details
    if status not in (0, -1, None):
        raise s.fail(
            f"customize script {script.name} failed with exit code {status}",
            tail,
            hint=f"full output in {s.log.path}; --debug-shell opens a shell on the VM",
        )
    if status is not None and not s.guest.shutdown_pending():
        if status == 0:
            return
        raise s.fail(f"customize script {script.name} was killed by a signal", tail)
    s.progress.info("the customize script rebooted the VM; waiting for it to come back")
    try:
        took = s.guest.wait_rebooted(boot_id, s.timeout)
    except SSHError as exc:
        raise s.fail(exc.message, tail, exc.hint) from None
    s.log.write(f"guest back after the reboot in {took:.1f} s")
    step_wait_cloud_init(s)


def kernel_package(base: BaseDisk, cfg: Config) -> str | None:
    """What /curtin/CUSTOM_KERNEL names: --kernel, else a Debian/bootstrap base's own kernel."""
    if cfg.provision.kernel:
        return cfg.provision.kernel
    if not cfg.release.family.maas_installs_kernel:
        return base.kernel or cfg.release.kernel_package(cfg.arch)
    return base.kernel if base.kind == "bootstrap" else None


def purges_kernel(base: BaseDisk, cfg: Config) -> bool:
    """Ubuntu cloud images ship without a kernel (MAAS installs one), as packer-maas does."""
    return (
        cfg.release.family.maas_installs_kernel
        and base.kind == "cloud"
        and not cfg.provision.kernel
    )


def step_kernel(s: Session) -> None:
    pkg = kernel_package(s.base, s.cfg)
    assert pkg is not None
    q = shlex.quote(pkg)
    if s.cfg.provision.kernel:
        s.root(f"installing kernel {pkg}", s.cfg.release.family.packages.install(q))
    s.root(
        "recording the kernel", f"mkdir -p /curtin && printf '%s\\n' {q} > /curtin/CUSTOM_KERNEL"
    )


def step_bootloaders(s: Session) -> None:
    """Both firmwares' grub in the image, the conflicting one as a .deb for the curtin hook."""
    header = f"IB_OFFLINE={int(s.cfg.source.offline)}\n"
    script = header.encode() + (SEEDS_DIR / s.cfg.release.family.bootloaders_script).read_bytes()
    result = s.guest.run(["sh", "-s"], input=script)
    for line in result.tail:
        if line.startswith("bootloaders: warning: "):
            s.progress.warning(line.removeprefix("bootloaders: warning: "))
    if result.status != 0:
        raise s.fail(f"preparing the bootloaders failed (exit {result.status})", result.tail_text())


def step_hygiene(s: Session) -> None:
    settings = {
        "IB_USER": BUILD_USER,
        "IB_KEY": s.guest.keys.client.public_openssh.split()[1],
        "IB_PROXY_FILE": s.cfg.release.family.packages.proxy_file,
        # dd outputs boot their own fstab (curtin keeps it); tar outputs get curtin's.
        "IB_REMOVE_FSTAB": "0" if s.cfg.output.filetype in DD_TYPES else "1",
    }
    if s.first_boot is not None:  # exactly: the base's files, even fresh ones, are older
        settings["IB_SINCE"] = str(s.first_boot)
    header = "".join(f"{k}={shlex.quote(v)}\n" for k, v in settings.items())
    script = header.encode() + (SEEDS_DIR / s.cfg.release.family.hygiene_script).read_bytes()
    try:
        result = s.guest.run(["sh", "-s"], input=script)
        status, tail = result.status, result.tail_text()
    except Disconnected as exc:
        status, tail = -1, exc.details
    if status != 0 and not (status == -1 and "hygiene: complete" in tail):
        raise s.fail(f"cleaning the image failed (exit {status})", tail)


def plan(base: BaseDisk, cfg: Config) -> list[Step]:
    """The steps for this build, in order."""
    steps = [Step("wait-cloud-init", step_wait_cloud_init), Step("setup", step_setup)]
    if cfg.provision.customize is not None:
        steps.append(Step("customize", step_customize, cfg.provision.customize.name))
    pkg = kernel_package(base, cfg)
    if pkg:
        steps.append(Step("kernel", step_kernel, pkg))
    steps.append(Step("bootloaders", step_bootloaders))
    steps.append(Step("hygiene", step_hygiene))
    return steps


# ---- the VM around the steps ------------------------------------------------------------


def size_bytes(size: str) -> int:
    """``8G``, ``20480M``, ``1.5T`` (binary units, as qemu-img reads them) in bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", size.strip().upper())
    if not m:
        raise ValueError(f"not a size: {size!r}")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " "))


def make_overlay(base: BaseDisk, disk: Path, size: str, log: BuildLog) -> None:
    """``disk``: a qcow2 backed by the base (never written), grown to ``size``."""
    log.write(f"overlay {disk} backed by {base.path} ({base.format})")
    run.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            base.format,
            "-b",
            base.path.resolve(),
            disk,
        ]
    )
    info = json.loads(run.run(["qemu-img", "info", "--output=json", disk]).stdout)
    if int(info["virtual-size"]) < size_bytes(size):
        run.run(["qemu-img", "resize", "-q", disk, size])


@contextlib.contextmanager
def build_vm(
    base: BaseDisk,
    cfg: Config,
    build_dir: Path,
    progress: Progress,
    log: BuildLog,
    *,
    spec_changes: Mapping[str, Any] | None = None,
) -> Iterator[Session]:
    """Boot the build VM and log in; everything is torn down when the block exits.

    ``spec_changes``: MachineSpec fields to change (the deploy test's extra disk and network).
    """
    build_id = uuid.uuid4().hex[:12]
    keys = BuildKeys.generate(build_id)
    disk = build_dir / "disk.qcow2"
    with contextlib.ExitStack() as stack:
        for name in (
            "seed.iso",
            f"efivars-{cfg.arch}.fd",
            "efi-code-arm64.fd",
            "id_ed25519",
            "known_hosts",
        ):
            stack.callback((build_dir / name).unlink, missing_ok=True)
        if not disk.exists():
            make_overlay(base, disk, cfg.machine.disk_size, log)
        seed = write_seed(
            build_dir / "seed.iso", keys, user=BUILD_USER, instance_id=f"imagebuilder-{build_id}"
        )
        accel = qemu.probe_accel(
            cfg.arch, progress, requested=cfg.machine.accel, cache_dir=cfg.source.cache_dir
        )
        timeout = qemu.boot_timeout(accel, cfg.machine.timeout, arch=cfg.arch)
        firmware = qemu.prepare_firmware(cfg.arch, cfg.machine.firmware, build_dir)
        http_url = None
        if cfg.provision.http_dir is not None:
            port = stack.enter_context(httpserve.serve(cfg.provision.http_dir, log=log.write))
            http_url = httpserve.guest_url(port)
            log.write(f"http: serving {cfg.provision.http_dir} on 127.0.0.1:{port} as {http_url}")
        qmp_path = stack.enter_context(qemu.short_socket_path(build_dir / "qmp.sock"))
        console = (lambda line: progress.info(f"console: {line}")) if cfg.machine.console else None
        for attempt in range(3):
            spec = qemu.build_spec(
                cfg,
                accel=accel,
                disk=disk,
                serial_log=build_dir / "serial.log",
                qmp_socket=qmp_path,
                firmware=firmware,
                seed=seed,
            )
            spec = dataclasses.replace(spec, **(spec_changes or {}))
            log.write(f"qemu: {shlex.join(qemu.qemu_argv(spec))}")
            machine = qemu.Machine(spec, stderr_log=build_dir / "qemu.log", console=console)
            try:
                stack.enter_context(machine)
                break
            except MachineError:
                if attempt == 2 or "forward" not in machine.qemu_errors():
                    raise
        if cfg.machine.vnc:
            progress.info(f"VNC display on {machine.vnc_address()}")
        guest = Guest(
            host="127.0.0.1",
            port=spec.ssh_port,
            user=BUILD_USER,
            keys=keys,
            log=log,
            alive=machine.check,
        )
        stack.callback(guest.close)
        epoch = cfg.output.source_date_epoch
        env = build_env(cfg, base.date if epoch is None else epoch)
        session = Session(cfg, base, machine, guest, log, progress, accel, timeout, env, http_url)
        with progress.stage("boot", f"{accel}, {cfg.machine.firmware.value}; waiting for SSH"):
            try:
                took = guest.wait_ready(timeout)
            except SSHError as exc:
                raise machine.error(exc.message, exc.hint) from None
        log.write(f"ssh ready {took:.1f} s after qemu started")
        yield session


def _power_off(s: Session) -> None:
    """Wait for the guest's own poweroff; ACPI over QMP, then kill, as fallbacks."""
    s.guest.close()
    wait = qemu.poweroff_timeout(s.accel, arch=s.cfg.arch)
    if s.machine.wait_exit(wait):
        return
    s.progress.warning("the build VM did not power off by itself; pressing the ACPI power button")
    if not s.machine.powerdown(wait):
        raise s.machine.error(
            f"the build VM did not power off within {2 * wait:.0f} s", "see the serial console"
        )


def _debug_shell(s: Session, exc: ProvisionError | SSHError) -> None:
    s.progress.warning(f"{exc.message}; opening a shell on the build VM (exit it to clean up)")
    for line in exc.details.splitlines():
        s.progress.info(f"| {line}")
    with contextlib.suppress(SSHError, OSError):
        s.guest.wait_ready(30.0)
        s.guest.interactive()


def provision(
    base: BaseDisk, cfg: Config, build_dir: Path, progress: Progress, *, debug_shell: bool = False
) -> Path:
    """Boot ``base``, run the steps, power off; returns build_dir/disk.qcow2."""
    log = BuildLog(build_dir / "build.log")
    try:
        with build_vm(base, cfg, build_dir, progress, log) as s:
            for step in plan(base, cfg):
                log.write(f"==> step {step.name}")
                with progress.stage(step.name, step.detail):
                    try:
                        step.run(s)
                    except (ProvisionError, SSHError) as exc:
                        if debug_shell:
                            _debug_shell(s, exc)
                        raise
            with progress.stage("poweroff"):
                _power_off(s)
    finally:
        log.close()
    return build_dir / "disk.qcow2"


def shell(base: BaseDisk, cfg: Config, build_dir: Path, progress: Progress) -> int:
    """Boot the build VM and open an interactive SSH session; returns the shell's status."""
    log = BuildLog(build_dir / "build.log")
    try:
        with build_vm(base, cfg, build_dir, progress, log) as s:
            with progress.stage("wait-cloud-init"):
                step_wait_cloud_init(s)
            write_proxy_file(s)
            identity, known = s.guest.keys.write_client_files(build_dir, "127.0.0.1", s.guest.port)
            progress.info(
                f"also: ssh -i {identity} -o UserKnownHostsFile={known} -p {s.guest.port} "
                f"{BUILD_USER}@127.0.0.1" + (f"   files: {s.http_url}" if s.http_url else "")
            )
            status = s.guest.interactive()
            s.machine.quit()
            return status
    finally:
        log.close()


__all__ = ["BUILD_USER", "Step", "plan", "provision", "shell"]
