"""The named steps of a build, run in the guest over SSH, and the plan that orders them.

wait-cloud-init, setup (proxy file, package refresh, kernel purge where MAAS
installs one), customize (the user's script, reboots included), kernel
(``/curtin/CUSTOM_KERNEL``), bootloaders and hygiene, each asking the release's
family for its commands and scripts. A :class:`Session` is what a step works with.
This module decides what runs in the guest; it neither boots the VM nor reads the
finished disk.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config.tree import DD_TYPES, Config
from ..errors import ProvisionError, SSHError
from ..progress import Progress
from ..sources.basedisk import BaseDisk
from . import qemu
from .seed import SEEDS_DIR
from .ssh import BuildLog, Disconnected, Guest

BUILD_USER = "imagebuilder-build"


REMOTE_SCRIPT = f"/home/{BUILD_USER}/customize"


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
    script = (
        header.encode()
        + (SEEDS_DIR / s.cfg.release.family.packages.bootloaders_script).read_bytes()
    )
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
    script = (
        header.encode() + (SEEDS_DIR / s.cfg.release.family.packages.hygiene_script).read_bytes()
    )
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
