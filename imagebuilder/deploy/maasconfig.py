"""The curtin config MAAS sends for a custom image, as data (no I/O).

Modelled on how MAAS composes curtin's config (maasserver's ``compose_curtin_*``), as the contract
file describes it: storage v1 for the machine's firmware (GPT; a 1 MiB
``bios_grub`` partition on BIOS, a 512 MiB FAT32 ESP at ``/boot/efi`` on UEFI; ext4
root; the disk is the ``grub_device``), network v2 matching the NIC by MAC, MAAS's
``webhook`` reporting, the three ``cloudconfig`` files (MAAS datasource only, its
metadata URL and OAuth credentials, cloud-init's event reporting), debconf
selections, ``curthooks: {mode: auto}`` and the late commands (``netboot_off``, and
the target's ``cloud-init --version``, plus ``netplan info`` for an Ubuntu
``base_image``, which is how Debian images are uploaded). The image URL is the
positional source of ``curtin install``, with the type prefix MAAS puts before
non-tgz files (:func:`source_url`).

JSON is written, which curtin's YAML loader reads as it is. This module decides
nothing about VMs or servers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..config.choices import FileType, Firmware

#: MAAS filetype -> curtin source type (the prefix of the positional source; tgz has none).
SOURCE_TYPE = {
    FileType.TGZ: "",
    FileType.TBZ: "tbz",
    FileType.TXZ: "txz",
    FileType.DDGZ: "dd-gz",
    FileType.DDXZ: "dd-xz",
    FileType.DDRAW: "dd-raw",
}
#: The rack's file name per MAAS filetype (``/images/custom/<arch>/<subarch>/<name>/uploaded/``).
RACK_FILE = {
    FileType.TGZ: "root-tgz",
    FileType.TBZ: "root-tbz",
    FileType.TXZ: "root-txz",
    FileType.DDGZ: "root-dd.gz",
    FileType.DDXZ: "root-dd.xz",
    FileType.DDRAW: "root-dd",
}
#: The serial the deploy VM gives its target disk; curtin finds the disk by it.
TARGET_SERIAL = "ib-deploy-target"
MiB = 1 << 20


@dataclass(frozen=True)
class Machine:
    """The facts of the machine being deployed that MAAS puts in the config."""

    firmware: Firmware
    mac: str
    disk_bytes: int
    system_id: str
    hostname: str
    metadata_url: str  # http://<region>/MAAS/metadata/
    consumer_key: str
    token_key: str
    token_secret: str
    ubuntu_base: bool = True  # base_image ubuntu/<series>: MAAS checks netplan too


def source_url(filetype: FileType, url: str) -> str:
    prefix = SOURCE_TYPE[filetype]
    return f"{prefix}:{url}" if prefix else url


def storage(m: Machine) -> dict[str, Any]:
    """storage v1: one GPT disk, bios_grub or ESP, then ext4 root filling the rest."""
    disk: dict[str, Any] = {
        "id": "sda", "type": "disk", "name": "sda", "serial": TARGET_SERIAL,
        "ptable": "gpt", "wipe": "superblock", "grub_device": True,
    }  # fmt: skip
    items: list[dict[str, Any]] = [disk]
    start = MiB  # sgdisk's first aligned sector
    if m.firmware is Firmware.UEFI:
        esp = 512 * MiB
        items += [
            {"id": "sda-part1", "type": "partition", "device": "sda", "number": 1,
             "size": f"{esp}B", "flag": "boot", "wipe": "superblock"},
            {"id": "sda-part1_format", "type": "format", "volume": "sda-part1",
             "fstype": "fat32", "label": "efi"},
        ]  # fmt: skip
    else:
        esp = MiB
        items.append(
            {"id": "sda-part1", "type": "partition", "device": "sda", "number": 1,
             "size": f"{esp}B", "flag": "bios_grub"}
        )  # fmt: skip
    # Leave 1 MiB at the end for the backup GPT, in whole MiB as MAAS rounds.
    root = (m.disk_bytes - start - esp - MiB) // MiB * MiB
    items += [
        {"id": "sda-part2", "type": "partition", "device": "sda", "number": 2,
         "size": f"{root}B", "wipe": "superblock"},
        {"id": "sda-part2_format", "type": "format", "volume": "sda-part2",
         "fstype": "ext4", "label": "root"},
        {"id": "sda-part2_mount", "type": "mount", "device": "sda-part2_format", "path": "/"},
    ]  # fmt: skip
    if m.firmware is Firmware.UEFI:
        items.append(
            {"id": "sda-part1_mount", "type": "mount", "device": "sda-part1_format",
             "path": "/boot/efi"}
        )  # fmt: skip
    return {"version": 1, "config": items}


def _creds(m: Machine) -> dict[str, str]:
    return {"consumer_key": m.consumer_key, "token_key": m.token_key,
            "token_secret": m.token_secret}  # fmt: skip


def curtin_config(m: Machine) -> dict[str, Any]:
    """The whole config for ``curtin install --config``."""
    status = f"{m.metadata_url}status/{m.system_id}"
    reporter = {"type": "webhook", "endpoint": status, **_creds(m)}
    datasource = {"datasource": {"MAAS": {"metadata_url": m.metadata_url, **_creds(m)}}}
    cloudconfig = {
        "maas-datasource": {
            "path": "/etc/cloud/cloud.cfg.d/90_maas_datasource.cfg",
            "content": "datasource_list: [ MAAS ]\n",
        },
        "maas-cloud-config": {
            "path": "/etc/cloud/cloud.cfg.d/90_maas_cloud_config.cfg",
            "content": json.dumps(datasource) + "\n",
        },
        "maas-reporting": {
            "path": "/etc/cloud/cloud.cfg.d/90_maas_cloud_init_reporting.cfg",
            "content": json.dumps({"reporting": {"maas": reporter}}) + "\n",
        },
    }
    late: dict[str, Any] = {
        "maas": ["wget", "--no-proxy", f"{m.metadata_url}2012-03-01/", "--post-data",
                 "op=netboot_off", "--header", _oauth_header(m), "-O", "/dev/null"],
        "cloudinit_check": ["curtin", "in-target", "--", "cloud-init", "--version"],
    }  # fmt: skip
    if m.ubuntu_base:
        late["netplan_check"] = ["curtin", "in-target", "--", "netplan", "info"]
    iface = "ens3"
    return {
        "storage": storage(m),
        "network": {
            "version": 2,
            "ethernets": {
                iface: {"match": {"macaddress": m.mac}, "set-name": iface, "dhcp4": True}
            },
        },
        "reporting": {"maas": reporter},
        "install": {"log_file": "/tmp/install.log", "error_tarfile": "/tmp/curtin-logs.tar"},
        "cloudconfig": cloudconfig,
        "debconf_selections": {
            "maas": "cloud-init   cloud-init/datasources  multiselect MAAS\n",
            "grub2": "grub-pc grub2/update_nvram boolean false\n",
        },
        "curthooks": {"mode": "auto"},
        "late_commands": late,
        "verbosity": 3,
    }


def _oauth_header(m: Machine) -> str:
    return (
        'Authorization: OAuth oauth_version="1.0", oauth_signature_method="PLAINTEXT", '
        f'oauth_consumer_key="{m.consumer_key}", oauth_token="{m.token_key}", '
        f'oauth_signature="&{m.token_secret}"'
    )


def render(m: Machine) -> str:
    return json.dumps(curtin_config(m), indent=1, sort_keys=True) + "\n"
