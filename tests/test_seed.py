"""The seed ISO read back with pycdlib, and the per-build keys it carries."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import paramiko
import pycdlib
import pytest

from imagebuilder.vm import seed
from imagebuilder.vm.keys import BuildKeys, generate_ed25519

yaml: Any = pytest.importorskip("yaml")  # PyYAML: cloud-init's own parser


def _read(iso: pycdlib.PyCdlib, **where: str) -> bytes:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, **where)
    return out.getvalue()


@pytest.fixture(scope="module")
def keys() -> BuildKeys:
    return BuildKeys.generate("test")


def test_keys_are_fresh_ed25519_in_openssh_format(keys: BuildKeys) -> None:
    assert keys.client.public_openssh.startswith("ssh-ed25519 AAAA")
    assert keys.client.public_openssh.endswith(" imagebuilder-build@test")
    assert keys.host.private_openssh.startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert keys.client.public_openssh != keys.host.public_openssh
    assert generate_ed25519("x").public_openssh != generate_ed25519("x").public_openssh
    # paramiko reads the private key and derives the same public key
    loaded = paramiko.Ed25519Key.from_private_key(io.StringIO(keys.host.private_openssh))
    assert loaded.get_base64() == keys.host.public_openssh.split()[1]
    assert keys.host.fingerprint == "SHA256:" + loaded.fingerprint.split(":", 1)[1]


def test_client_files_for_openssh(keys: BuildKeys, tmp_path: Path) -> None:
    identity, known = keys.write_client_files(tmp_path, "127.0.0.1", 2222)
    assert identity.stat().st_mode & 0o777 == 0o600
    assert identity.read_text() == keys.client.private_openssh
    name, kind, blob = known.read_text().split()
    assert (name, kind) == ("[127.0.0.1]:2222", "ssh-ed25519")
    assert blob == keys.host.public_openssh.split()[1]


def test_user_data_has_only_our_key_and_no_password(keys: BuildKeys) -> None:
    text = seed.render_user_data(keys, user="imagebuilder-build")
    assert text.startswith("#cloud-config\n")
    doc: dict[str, Any] = yaml.safe_load(text)
    (user,) = doc["users"]
    assert user["name"] == "imagebuilder-build"
    assert user["lock_passwd"] is True
    assert user["ssh_authorized_keys"] == [keys.client.public_openssh]
    assert user["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert not any("pass" in k and k != "lock_passwd" for k in user)
    assert "password" not in doc and "chpasswd" not in doc
    assert "ssh_pwauth" not in doc  # sshd_config stays as the base had it
    assert doc["ssh_deletekeys"] is True
    assert doc["ssh_genkeytypes"] == []
    assert doc["ssh_keys"] == {
        "ed25519_private": keys.host.private_openssh,
        "ed25519_public": keys.host.public_openssh,
    }
    assert keys.client.private_openssh not in text


def test_seed_iso_reads_back(keys: BuildKeys, tmp_path: Path) -> None:
    path = seed.write_seed(
        tmp_path / "seed.iso",
        keys,
        user="imagebuilder-build",
        instance_id="imagebuilder-abc",
        network_config=seed.default_network_config(),
    )
    assert not list(tmp_path.glob(".*partial"))
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"
        assert iso.has_joliet() and iso.has_rock_ridge()
        user_data = _read(iso, rr_path="/user-data")
        assert user_data == _read(iso, joliet_path="/user-data")
        assert yaml.safe_load(user_data)["users"][0]["name"] == "imagebuilder-build"
        meta = yaml.safe_load(_read(iso, rr_path="/meta-data"))
        assert meta == {"instance-id": "imagebuilder-abc", "local-hostname": "imagebuilder"}
        net = yaml.safe_load(_read(iso, rr_path="/network-config"))
        assert net["version"] == 2 and net["ethernets"]["build0"]["dhcp4"] is True
        names = sorted(c.rock_ridge.name().decode() for c in iso.list_children(iso_path="/")
                       if c.is_file())  # fmt: skip
        assert names == ["meta-data", "network-config", "user-data"]
    finally:
        iso.close()


def test_seed_without_network_config(keys: BuildKeys, tmp_path: Path) -> None:
    path = seed.write_seed(tmp_path / "s.iso", keys, user="u", instance_id="i")
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        files = [c.rock_ridge.name().decode() for c in iso.list_children(rr_path="/")
                 if c.is_file()]  # fmt: skip
        assert sorted(files) == ["meta-data", "user-data"]
    finally:
        iso.close()


def test_unknown_seed_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a NoCloud seed file"):
        seed.write_iso(tmp_path / "x.iso", {"user-data": b"", "evil": b""})
    assert not (tmp_path / "x.iso").exists()
