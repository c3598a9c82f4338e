"""Config layering, validation and round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuilder.config import tree
from imagebuilder.errors import ConfigError, UnknownSeriesError


def test_defaults_resolve() -> None:
    cfg = tree.resolve({"series": "jammy"}, environ={})
    assert cfg.series == "jammy"
    assert cfg.machine.firmware is tree.Firmware.UEFI
    assert cfg.machine.disk_size == "8G"
    assert cfg.output.filetype is tree.FileType.TGZ


def test_layers_cli_over_env_over_file(tmp_path: Path) -> None:
    f = tmp_path / "ib.toml"
    f.write_text(
        'series = "noble"\n[machine]\nmemory = 1024\ncpus = 1\n[output]\ncompression = "best"\n'
    )
    env = {"IMAGEBUILDER_MEMORY": "3072", "IMAGEBUILDER_CPUS": "4"}
    cfg = tree.resolve({"cpus": "2"}, environ=env, config_file=f)
    assert cfg.series == "noble"  # file
    assert cfg.output.compression is tree.Compression.BEST  # file
    assert cfg.machine.memory == 3072  # env beats file
    assert cfg.machine.cpus == 2  # cli beats env


def test_all_errors_reported_at_once() -> None:
    with pytest.raises(ConfigError) as ei:
        tree.resolve(
            {"series": "jammy", "memory": "0", "firmware": "x", "disk_size": "big"}, environ={}
        )
    msg = ei.value.message
    assert "3 errors" in msg
    for opt in ("--memory", "--firmware", "--disk-size"):
        assert opt in msg
    assert ei.value.exit_code == 2


def test_unknown_series_lists_known() -> None:
    with pytest.raises(UnknownSeriesError) as ei:
        tree.resolve({"series": "nosuchseries"}, environ={})
    assert "jammy" in ei.value.message and "bookworm" in ei.value.message


def test_version_alias_and_arch_check() -> None:
    assert tree.resolve({"series": "22.04"}, environ={}).series == "jammy"
    with pytest.raises(ConfigError, match="arch"):
        tree.resolve({"series": "jammy", "arch": "s390x"}, environ={})


def test_missing_customize_script(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--customize"):
        tree.resolve({"series": "jammy", "customize": str(tmp_path / "nope.sh")}, environ={})


def test_unknown_toml_key(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[machine]\nmemroy = 5\nbase = 'cloud'\n")
    with pytest.raises(ConfigError) as ei:
        tree.resolve({"series": "jammy"}, environ={}, config_file=f)
    assert "memroy" in ei.value.message and "base" in ei.value.message


def test_toml_round_trip(tmp_path: Path) -> None:
    cfg = tree.resolve(
        {"series": "bookworm", "base": "bootstrap", "extra_packages": "vim,curl", "memory": "4096"},
        environ={},
    )
    f = tmp_path / "out.toml"
    f.write_text(tree.to_toml(cfg))
    again = tree.resolve({}, environ={}, config_file=f)
    assert again == cfg


def test_dict_round_trip() -> None:
    cfg = tree.resolve({"series": "noble", "filetype": "ddgz", "accel": "tcg"}, environ={})
    assert tree.from_dict(tree.to_dict(cfg)) == cfg


def test_proxy_defaults_from_environment() -> None:
    cfg = tree.resolve({"series": "jammy"}, environ={"http_proxy": "http://proxy:3128"})
    assert cfg.provision.http_proxy == "http://proxy:3128"
    cfg = tree.resolve(
        {"series": "jammy", "http_proxy": "http://other:1"}, environ={"http_proxy": "x"}
    )
    assert cfg.provision.http_proxy == "http://other:1"
