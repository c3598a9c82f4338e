"""The NoCloud seed of the build VM: an ISO 9660 image labelled ``cidata``.

Renders ``user-data``, ``meta-data`` and an optional ``network-config`` from the
templates in the top-level ``seeds/`` directory and writes them, with Joliet and
Rock Ridge names, using pycdlib (no cloud-localds or genisoimage). The ISO is
complete before qemu starts (written under a temporary name and renamed), unlike
packer-maas, which builds it in parallel with the VM. This module only writes the
file; it knows nothing about qemu or SSH.
"""

from __future__ import annotations

import io
import json
import os
import string
from collections.abc import Mapping
from pathlib import Path

import pycdlib

from ..resources import data_dir
from .keys import BuildKeys

#: The top-level seeds/ directory holding the templates.
SEEDS_DIR = data_dir("seeds")
VOLUME_LABEL = "cidata"
#: Name on the ISO (ISO 9660 level 1 needs 8.3 upper case) -> Rock Ridge/Joliet name.
ISO_NAMES = {
    "user-data": "USERDATA.;1",
    "meta-data": "METADATA.;1",
    "network-config": "NETCFG.;1",
    "vendor-data": "VENDDATA.;1",
}


def _template(name: str) -> string.Template:
    path = SEEDS_DIR / name
    return string.Template(path.read_text())


def _yaml_str(value: str) -> str:
    """A YAML scalar for any string: JSON is YAML, and JSON escapes newlines."""
    return json.dumps(value)


def render_user_data(keys: BuildKeys, *, user: str) -> str:
    """cloud-config creating ``user`` (key-only, sudo) and installing the pinned host key."""
    return _template("user-data.yaml.in").substitute(
        user=user,
        client_public_key=_yaml_str(keys.client.public_openssh),
        host_private_key=_yaml_str(keys.host.private_openssh),
        host_public_key=_yaml_str(keys.host.public_openssh),
    )


def render_meta_data(*, instance_id: str, hostname: str) -> str:
    return _template("meta-data.yaml.in").substitute(
        instance_id=_yaml_str(instance_id), hostname=_yaml_str(hostname)
    )


def default_network_config() -> str:
    """Netplan v2 DHCP on the first ethernet NIC (cloud-init's fallback does the same)."""
    return _template("network-config.yaml.in").substitute()


def write_iso(path: Path, files: Mapping[str, bytes], *, label: str = VOLUME_LABEL) -> Path:
    """Write ``files`` (seed name -> bytes) as an ISO with volume ``label``; atomic."""
    unknown = set(files) - set(ISO_NAMES)
    if unknown:
        raise ValueError(f"not a NoCloud seed file: {', '.join(sorted(unknown))}")
    iso = pycdlib.PyCdlib()
    iso.new(
        interchange_level=1,
        vol_ident=label,
        sys_ident="LINUX",
        app_ident_str="imagebuilder",
        joliet=3,
        rock_ridge="1.09",
    )
    for name in sorted(files):
        data = files[name]
        iso.add_fp(
            io.BytesIO(data),
            len(data),
            f"/{ISO_NAMES[name]}",
            rr_name=name,
            joliet_path=f"/{name}",
            file_mode=0o100444,
        )
    tmp = path.with_name(f".{path.name}.partial")
    try:
        iso.write(str(tmp))
        iso.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_seed(
    path: Path,
    keys: BuildKeys,
    *,
    user: str,
    instance_id: str,
    hostname: str = "imagebuilder",
    network_config: str | None = None,
) -> Path:
    """Render the templates for this build and write the seed ISO at ``path``."""
    files = {
        "user-data": render_user_data(keys, user=user).encode(),
        "meta-data": render_meta_data(instance_id=instance_id, hostname=hostname).encode(),
    }
    if network_config is not None:
        files["network-config"] = network_config.encode()
    return write_iso(path, files)
