"""The deploy test's parts that need no VM: MAAS's config, the region stand-in, curtin lookup."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from imagebuilder.config.choices import FileType, Firmware
from imagebuilder.deploy import curtinsrc, deployvm, imagefile, maasconfig, region
from imagebuilder.errors import ConfigError

VENDOR = Path(__file__).resolve().parents[2] / "shared" / "vendor"
VENDOR_CURTIN = VENDOR / "curtin-23.1.1-737e305.tar.gz"


def _machine(fw: Firmware) -> maasconfig.Machine:
    return maasconfig.Machine(
        firmware=fw, mac="52:54:00:00:00:01", disk_bytes=10 << 30, system_id="abc123",
        hostname="node", metadata_url="http://10.0.2.100/MAAS/metadata/",
        consumer_key="ck", token_key="tk", token_secret="ts",
    )  # fmt: skip


@pytest.mark.parametrize("fw", [Firmware.BIOS, Firmware.UEFI])
def test_storage_follows_maas_layout_per_firmware(fw: Firmware) -> None:
    items = maasconfig.storage(_machine(fw))["config"]
    disk = items[0]
    assert disk["ptable"] == "gpt" and disk["grub_device"] is True
    assert disk["serial"] == maasconfig.TARGET_SERIAL
    part1 = next(i for i in items if i["id"] == "sda-part1")
    mounts = {i["path"]: i["device"] for i in items if i["type"] == "mount"}
    if fw is Firmware.BIOS:
        assert part1["flag"] == "bios_grub" and part1["size"] == f"{1 << 20}B"
        assert set(mounts) == {"/"}
    else:
        assert part1["flag"] == "boot" and part1["size"] == f"{512 << 20}B"
        fmt = next(i for i in items if i["id"] == "sda-part1_format")
        assert fmt["fstype"] == "fat32" and mounts["/boot/efi"] == "sda-part1_format"
    sizes = sum(int(i["size"][:-1]) for i in items if i["type"] == "partition")
    assert sizes <= (10 << 30) - (2 << 20)  # room for the GPT at both ends


def test_config_carries_what_maas_sends() -> None:
    cfg = maasconfig.curtin_config(_machine(Firmware.UEFI))
    assert cfg["network"]["ethernets"]["ens3"]["match"] == {"macaddress": "52:54:00:00:00:01"}
    paths = {v["path"] for v in cfg["cloudconfig"].values()}
    assert "/etc/cloud/cloud.cfg.d/90_maas_datasource.cfg" in paths
    ds = json.loads(cfg["cloudconfig"]["maas-cloud-config"]["content"])
    assert ds["datasource"]["MAAS"]["metadata_url"] == "http://10.0.2.100/MAAS/metadata/"
    assert cfg["reporting"]["maas"]["endpoint"].endswith("/MAAS/metadata/status/abc123")
    assert cfg["late_commands"]["cloudinit_check"][-2:] == ["cloud-init", "--version"]
    assert cfg["late_commands"]["netplan_check"][-2:] == ["netplan", "info"]
    assert "grub2/update_nvram boolean false" in cfg["debconf_selections"]["grub2"]
    assert cfg["curthooks"] == {"mode": "auto"}
    assert "kernel" not in cfg  # MAAS sends none for custom images


def test_source_urls_carry_curtins_type_prefix() -> None:
    assert maasconfig.source_url(FileType.TGZ, "http://r/x") == "http://r/x"
    assert maasconfig.source_url(FileType.DDGZ, "http://r/x") == "dd-gz:http://r/x"
    assert maasconfig.source_url(FileType.TXZ, "http://r/x") == "txz:http://r/x"


def _tar_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("./etc/hostname")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    return buf.getvalue()


def test_filetype_is_sniffed_from_the_bytes(tmp_path: Path) -> None:
    tgz = tmp_path / "root.tar.gz"
    tgz.write_bytes(gzip.compress(_tar_bytes()))
    assert imagefile.filetype_of(tgz) is FileType.TGZ
    disk = bytearray(1 << 20)
    disk[510:512] = b"\x55\xaa"
    dd = tmp_path / "disk.img.gz"
    dd.write_bytes(gzip.compress(bytes(disk)))
    assert imagefile.filetype_of(dd) is FileType.DDGZ
    junk = tmp_path / "junk.tgz"
    junk.write_bytes(gzip.compress(b"not an image" * 100))
    with pytest.raises(ConfigError, match="not a root tarball or disk image"):
        imagefile.filetype_of(junk)


def test_curtin_is_found_and_packed_from_the_vendor_tarball(tmp_path: Path) -> None:
    if not VENDOR_CURTIN.exists():
        pytest.skip(f"{VENDOR_CURTIN} not beside the checkout")
    found = curtinsrc.find_curtin(VENDOR_CURTIN)
    assert found.version != "unknown"
    packed = curtinsrc.pack(found, tmp_path / "c.tar.gz")
    with tarfile.open(packed) as tar:
        names = set(tar.getnames())
    assert {"curtin/bin/curtin", "curtin/curtin/__init__.py", "curtin/helpers/smtar"} <= names


def test_no_curtin_is_a_one_line_error_naming_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a curtin source tree") as exc:
        curtinsrc.find_curtin(tmp_path)
    assert exc.value.hint is not None and "--curtin" in exc.value.hint
    env_tar = tmp_path / "x.tar.gz"
    env_tar.write_bytes(gzip.compress(_tar_bytes()))
    with pytest.raises(ConfigError, match="holds no curtin"):
        curtinsrc.find_curtin(environ={curtinsrc.ENV: str(env_tar)})


def test_curtin_reason_names_the_failing_command() -> None:
    out = [
        "Running command ['unshare', ...]",
        "Unexpected error while running command.",
        "Command: ['/tmp/target/curtin/curtin-hooks']",
        "Exit code: 1",
        "curtin: Installation failed with exception: Unexpected error while running command.",
    ]
    assert deployvm.curtin_reason(out) == (
        "curtin's command ['/tmp/target/curtin/curtin-hooks'] failed (exit 1)"
    )
    assert "no reason" in deployvm.curtin_reason(["nothing useful"])
    later = [*out, "Command: ['sudo', 'lshw']", "Exit code: 127"]  # collecting logs, after
    assert deployvm.curtin_reason(later) == deployvm.curtin_reason(out)


def _get(url: str, *, token: str | None = None, data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data)
    if token is not None:
        req.add_header("Authorization", f'OAuth oauth_token="{token}", oauth_signature="&x"')
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_region_serves_metadata_only_to_the_nodes_token_and_judges_deployed(
    tmp_path: Path,
) -> None:
    image = tmp_path / "img"
    image.write_bytes(b"x" * 3000)
    node = region.Node(system_id="n1", hostname="h1", token_key="tk", token_secret="ts",
                       consumer_key="ck", public_keys=("ssh-ed25519 AAA k",))  # fmt: skip
    with region.serve(node, image, "/images/custom/a/b/c/uploaded/root-tgz") as reg:
        base = f"http://127.0.0.1:{reg.port}"
        assert _get(base + "/images/custom/a/b/c/uploaded/root-tgz") == (200, b"x" * 3000)
        md = base + "/MAAS/metadata/2012-03-01/meta-data/"
        assert _get(md + "instance-id")[0] == 401
        assert _get(md + "instance-id", token="other")[0] == 401
        assert _get(md + "instance-id", token="tk") == (200, b"n1")
        assert _get(md + "public-keys", token="tk") == (200, b"ssh-ed25519 AAA k")
        status = base + "/MAAS/metadata/status/n1"
        assert reg.deployed() is None
        ev = {"origin": "cloudinit", "event_type": "finish", "name": "modules-final"}
        assert _get(status, data=json.dumps({**ev, "result": "SUCCESS"}).encode())[0] == 401
        assert _get(status, token="tk", data=b"not json")[0] == 400
        _get(status, token="tk", data=json.dumps({**ev, "result": "SUCCESS"}).encode())
        assert reg.deployed() is True and reg.failures() == []
        bad = {**ev, "name": "modules-config", "result": "FAIL"}
        _get(status, token="tk", data=json.dumps(bad).encode())
        assert [e["name"] for e in reg.failures()] == ["modules-config"]
