"""``deploy_test(image, ...)``: deploy an output as MAAS does, with the real curtin, and boot it.

Per firmware (BIOS = SeaBIOS, UEFI = OVMF), each on a machine of its own:

1. preflight, before any VM: the file's MAAS filetype (:mod:`imagefile`), curtin
   (:mod:`curtinsrc`), the firmware files;
2. the region stand-in (:mod:`region`) serves the image at the rack's path, the
   node's metadata and takes its status events;
3. the deploy VM (:mod:`deployvm`, the cached ephemeral base) runs
   ``curtin install`` with MAAS's config (:mod:`maasconfig`) onto a blank disk,
   with no package source reachable;
4. the disk alone boots (:mod:`targetboot`): modules-final SUCCESS at the region,
   a login prompt, an SSH login with the metadata's key.

Logs (build log, serial consoles, curtin's install log, the curtin config, the
region's events) are kept in ``<cache>/logs/deploy-<firmware>/`` whatever happens.
Everything else (VMs, servers, disks, keys) is on one ExitStack and gone on every
exit path, Ctrl-C included. The library raises DeployError; it never prints.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..base.obtain import obtain_base
from ..config.choices import BaseKind, FileType, Firmware
from ..config.tree import Config, resolve
from ..errors import ConfigError, host_package_hint
from ..progress import Progress
from ..vm import timeouts, uefi
from ..vm.keys import BuildKeys
from ..vm.ssh import BuildLog
from . import curtinsrc, deployvm, imagefile, maasconfig, region, targetboot

#: The blank disk MAAS's machine has (sparse; large enough for an 8 GiB dd image).
TARGET_BYTES = 10 << 30
#: The deploy VM's and the deployed machine's NIC (a locally administered qemu MAC).
MAC = "52:54:00:1b:de:01"
#: Where a rack serves an uploaded custom image (the file name follows the filetype).
RACK = "/images/custom/amd64/generic/imagebuilder-test/uploaded/"


@dataclass(frozen=True)
class FirmwareResult:
    firmware: str
    curtin_seconds: float
    deployed_seconds: float  # first boot until modules-final SUCCESS reached the region
    login_seconds: float
    total_seconds: float
    user: str


@dataclass(frozen=True)
class DeployResult:
    image: Path
    filetype: str
    curtin: str
    results: list[FirmwareResult] = field(default_factory=list)


def env_config(cfg: Config | None, *, firmware: Firmware, cache_dir: Path | None) -> Config:
    """The ephemeral environment's build config: bootstrap bookworm plus :data:`PACKAGES`."""
    values: dict[str, object] = {
        "series": "bookworm", "base": "bootstrap", "arch": "amd64",
        "extra_packages": ",".join(deployvm.PACKAGES), "firmware": firmware.value,
        "memory": 2048, "cpus": 2,
    }  # fmt: skip
    if cfg is not None:
        values.update(cache_dir=cfg.source.cache_dir, mirror=cfg.source.mirror,
                      offline=cfg.source.offline, accel=cfg.machine.accel.value)  # fmt: skip
    if cache_dir is not None:
        values["cache_dir"] = cache_dir
    return resolve(values, environ={})


def firmwares(choice: str) -> list[Firmware]:
    if choice == "both":
        return [Firmware.BIOS, Firmware.UEFI]
    try:
        return [Firmware(choice)]
    except ValueError:
        raise ConfigError(f"--firmware {choice}: not a firmware",
                          hint="use bios, uefi or both") from None  # fmt: skip


def _node(login: BuildKeys) -> region.Node:
    token = secrets.token_hex(4)
    user_data = "#cloud-config\n" + json.dumps({
        # The deployed machine's ssh host key, so the test pins it (no trust on first use).
        "ssh_deletekeys": True, "ssh_genkeytypes": [],
        "ssh_keys": {"ed25519_private": login.host.private_openssh,
                     "ed25519_public": login.host.public_openssh},
    }, indent=1) + "\n"  # fmt: skip
    return region.Node(
        system_id=f"ib{token}", hostname=f"deployed-{token}",
        token_key=secrets.token_hex(9), token_secret=secrets.token_hex(16),
        consumer_key=secrets.token_hex(9), public_keys=(login.client.public_openssh,),
        user_data=user_data.encode(),
    )  # fmt: skip


def _save(work: Path, dest: Path, reg: region.Region | None) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    for p in work.glob("*.log"):
        shutil.copy2(p, dest / p.name)
    for name in ("maas-curtin.json",):
        if (work / name).exists():
            shutil.copy2(work / name, dest / name)
    if reg is not None:
        with reg.lock:
            (dest / "region-events.json").write_text(json.dumps(reg.events, indent=1) + "\n")
            (dest / "region-requests.log").write_text("\n".join(reg.requests) + "\n")


def deploy_one(
    image: Path, filetype: FileType, fw: Firmware, *, curtin_tar: Path, env: Config,
    progress: Progress, logs: Path,
) -> FirmwareResult:  # fmt: skip
    """Deploy ``image`` on one machine of firmware ``fw`` and boot it."""
    start = time.monotonic()
    with progress.stage("deploy-base", "the ephemeral environment (cached bootstrap base)"):
        base = obtain_base(env, progress)
    work = Path(tempfile.mkdtemp(prefix=f"imagebuilder-deploy-{fw.value}-"))
    reg: region.Region | None = None
    try:
        log = BuildLog(work / "build.log")
        with contextlib.ExitStack() as stack:
            stack.callback(log.close)
            login = BuildKeys.generate("deploy-login")
            node = _node(login)
            rack = RACK + maasconfig.RACK_FILE[filetype]
            reg = stack.enter_context(region.serve(node, image, rack))
            base_url = f"http://{deployvm.REGION_ADDRESS}"
            target = work / "target.raw"
            with open(target, "wb") as fh:
                fh.truncate(TARGET_BYTES)
            machine = maasconfig.Machine(
                firmware=fw, mac=MAC, disk_bytes=TARGET_BYTES, system_id=node.system_id,
                hostname=node.hostname, metadata_url=f"{base_url}/MAAS/metadata/",
                consumer_key=node.consumer_key, token_key=node.token_key,
                token_secret=node.token_secret,
            )  # fmt: skip
            config = maasconfig.render(machine)
            (work / "maas-curtin.json").write_text(config)
            source = maasconfig.source_url(filetype, base_url + rack)
            with deployvm.deploy_vm(base, env, work, progress, log, target=target, mac=MAC,
                                    region_port=reg.port) as s:  # fmt: skip
                done = deployvm.install(s, curtin_tar=curtin_tar, config=config,
                                        source=source, logs=work,
                                        kept=logs / f"deploy-{fw.value}")  # fmt: skip
                # The deploy VM's own UEFI vars (curtin's boot entry) move with the disk.
                s.guest.run("sync", tail=1)
                s.machine.quit()
                kept_vars = work / "deployed-vars.fd"
                if fw is Firmware.UEFI:
                    shutil.copyfile(work / "efivars-amd64.fd", kept_vars)
            user = done.default_user or "ubuntu"
            code = uefi.UEFI_FIRMWARE["amd64"][0] if fw is Firmware.UEFI else None
            files = (code, kept_vars) if fw is Firmware.UEFI else (None, None)
            booted = targetboot.boot_target(
                disk=target, firmware=fw, firmware_files=files, mac=MAC, region=reg,
                region_address=deployvm.REGION_ADDRESS, keys=login, user=user, work=work,
                progress=progress, log=log,
                timeout=timeouts.boot_timeout("tcg", env.machine.timeout),
            )  # fmt: skip
        return FirmwareResult(
            firmware=fw.value, curtin_seconds=round(done.seconds, 1),
            deployed_seconds=round(booted.seconds_to_deployed, 1),
            login_seconds=round(booted.seconds_to_login, 1),
            total_seconds=round(time.monotonic() - start, 1), user=booted.user,
        )  # fmt: skip
    finally:
        _save(work, logs / f"deploy-{fw.value}", reg)
        shutil.rmtree(work, ignore_errors=True)


def _check_host(fws: list[Firmware]) -> None:
    """The programs and firmware files the VMs need, before any of them starts."""
    if shutil.which("qemu-system-x86_64") is None:
        raise ConfigError("qemu-system-x86_64 not found", hint=host_package_hint("qemu-system-x86"))
    if shutil.which("busybox") is None:
        raise ConfigError("busybox not found (it relays the guest's HTTP to the region)",
                          hint=host_package_hint("busybox"))  # fmt: skip
    if Firmware.UEFI in fws:
        for path in uefi.UEFI_FIRMWARE["amd64"]:
            if not path.is_file():
                raise ConfigError(f"{path} not found (OVMF, for the UEFI deploy)",
                                  hint=host_package_hint("ovmf"))  # fmt: skip


def deploy_test(
    image: Path,
    *,
    firmware: str = "both",
    curtin: Path | None = None,
    cfg: Config | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> DeployResult:
    """Deploy ``image`` with the real curtin under each firmware and boot it; raise on failure."""
    progress = progress or Progress()
    fws = firmwares(firmware)
    filetype = imagefile.filetype_of(image)
    found = curtinsrc.find_curtin(curtin)
    _check_host(fws)
    env = env_config(cfg, firmware=fws[0], cache_dir=cache_dir)
    if env.source.base is not BaseKind.BOOTSTRAP:  # pragma: no cover - env_config sets it
        raise ConfigError("the deploy environment must be a bootstrap base")
    logs = env.source.cache_dir / "logs"
    result = DeployResult(image=image, filetype=filetype.value,
                          curtin=f"{found.version} ({found.origin})")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="imagebuilder-curtin-") as tmp:
        tar = curtinsrc.pack(found, Path(tmp) / "curtin.tar.gz")
        for fw in fws:
            fw_env = env_config(cfg, firmware=fw, cache_dir=cache_dir)
            progress.info(f"deploy test: {image.name} ({filetype.value}) on a {fw.value} machine")
            result.results.append(deploy_one(image.resolve(), filetype, fw, curtin_tar=tar,
                                             env=fw_env, progress=progress, logs=logs))  # fmt: skip
    return result
