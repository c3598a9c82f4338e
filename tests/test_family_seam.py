"""The OS-family seam, proved with a look-alike family defined only here.

``tinyos`` is a LOOK-ALIKE: an invented family with one release (``pebble``), its
own package manager (``tinypkg``), package database, installer kind and bootstrap
tool. It plugs in through ``catalogue.register`` alone, and every stage that asks a
family (config, releases, provision, the manifest, inspect, the installer's answers,
the bootstrap recipe) then builds it without a change to any other module. What it
proves: the stages read the family, not a distribution's name. What it does not
prove: that a real second family builds (the RHEL-family issue does that), or
anything run in a guest (the commands here go to a recording fake guest).

Also here: the literal guard of the layout issue, that no module outside
``imagebuilder/families/`` names apt-get, dpkg, preseed or autoinstall.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import re
import tarfile
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest

from imagebuilder.base import recipe as bootrecipe
from imagebuilder.base import rootfs
from imagebuilder.cli import main as cli_main
from imagebuilder.config.tree import Config, resolve
from imagebuilder.errors import UnknownSeriesError
from imagebuilder.export import manifest
from imagebuilder.export.outputlint import Entry, InspectReport, Tree, check_tree, read_tar
from imagebuilder.families import catalogue
from imagebuilder.families.seam import (
    AnswerRequest,
    BootstrapJob,
    BootstrapTool,
    Family,
    InstallerKind,
    Packages,
    PackageSystem,
    Release,
    Resolution,
)
from imagebuilder.installer import build as installer_build
from imagebuilder.progress import Progress
from imagebuilder.sources.basedisk import BaseDisk
from imagebuilder.vm import buildenv, steps
from imagebuilder.vm.ssh import BuildLog
from tests.fakes.guest import FakeGuest

PKG = Path(__file__).resolve().parent.parent / "imagebuilder"
DB = "var/lib/tinypkg/installed"


def _parse(data: bytes) -> Packages:
    rows = [line.split() for line in data.decode().splitlines() if line.strip()]
    return [{"name": n, "version": v, "architecture": a} for n, v, a in rows]


def _unused(*_: Any) -> Any:
    raise AssertionError("the look-alike family has no such host step")


TINY_PM = PackageSystem(
    name="tinypkg",
    env={"TINYPKG_YES": "1"},
    refresh="tinypkg sync",
    install=lambda quoted: f"tinypkg add {quoted}",
    remove_kernels="tinypkg drop kernel",
    database=DB,
    parse_database=_parse,
    native="tinypkg",
    proxy_file="/etc/tinypkg/proxy",
    proxy_conf=lambda env: "".join(f"proxy {v}\n" for k, v in sorted(env.items())),
    archive_source=lambda mirror, suite, comps: f"tiny {mirror} {suite}",
    fetch_package=_unused,
    package_payload=cast(Any, _unused),
    bootloaders_script="bootloaders.sh",
    hygiene_script="hygiene.sh",
    curtin_installs={"amd64": {"BIOS": ("tiny-grub-pc",), "UEFI": ("tiny-grub-efi",)}},
    resolve_versions=lambda *a: Resolution({"tiny-base": "1.0"}, {}),
)

TINY_INSTALLER = InstallerKind(
    name="tinyinstall",
    answers=lambda req: f"layout={req.layout} firmware={req.firmware} kernel={req.kernel}\n",
    answer_file="answers.txt",
    served=True,
    cmdline=lambda url, arch: f"tiny.answers={url} console=ttyS0",
    iso_members={"amd64": ("boot/kernel", "boot/initrd")},
    min_memory=0,
    fatal=("tinyinstall: FAILED",),
    iso_dir_url=None,
    iso_pick=None,
    netboot=None,
    components=None,
    pending_question=lambda text: None,
)

TINY_TOOL = BootstrapTool(
    name="tinystrap",
    packages=lambda rel, arch, extra: tuple(sorted({"tiny-base", "tiny-kernel", *extra})),
    sources=lambda family, mirror, suite, comps: [f"tiny {mirror} {suite}"],
    argv=lambda job: ["tinystrap", job.suite, str(job.target), *job.sources],
    release_urls=lambda lines: [f"{line.split()[1]}/RELEASE" for line in lines],
    release_date=lambda text: None,
    index_dir="var/lib/tinypkg/index",
    scratch=("var/cache/tinypkg",),
    emulated_env={},
    foreign_arch_tools={},
    relay=lambda line: None,
    initramfs=lambda version: ["tiny-initrd", version],
    locale=lambda name: ({}, ["tiny-locale", name]),
)

TINY = Family(
    name="tinyos",
    title="TinyOS",
    packages=TINY_PM,
    image_filename=lambda rel, arch, released: f"tinyos-{rel.version}-{arch}.qcow2",
    image_dir_url=lambda rel, mirror, serial, released: f"{mirror or 'https://x'}/{rel.codename}",
    archive_mirror=lambda arch: "http://archive.tinyos.invalid/tiny",
    archive_keyring="/usr/share/keyrings/tinyos.gpg",
    keyring_package="tinyos-keyring",
    bootstrap_components=("core",),
    security_mirror=lambda mirror: None,
    kernel_package=lambda arch, flavour: f"tiny-kernel-{arch}",
    maas_installs_kernel=False,
    maas_base_image=lambda rel: "ubuntu/jammy",
    bootloader_id="tinyos",
    separate_resolved=lambda rel: False,
    installer=TINY_INSTALLER,
    extended_support="tiny extended",
    lts_in_version=False,
    daily_serials=False,
    bootstrap=TINY_TOOL,
)

PEBBLE = Release(
    TINY, "pebble", "1.0", True, dt.date(2026, 1, 1), dt.date(2030, 1, 1), arches=("amd64",)
)


@pytest.fixture
def tiny() -> Iterator[None]:
    with catalogue.register(TINY, (PEBBLE,)):
        yield


def _cfg(**values: Any) -> Config:
    return resolve({"series": "pebble", **values}, environ={})


def test_the_look_alike_is_unknown_until_registered_and_gone_after() -> None:
    with pytest.raises(UnknownSeriesError):
        _cfg()
    with catalogue.register(TINY, (PEBBLE,)):
        assert _cfg().release is PEBBLE and _cfg().release.family is TINY
    with pytest.raises(UnknownSeriesError):
        _cfg()


def test_config_and_the_releases_table_take_the_family(
    tiny: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(Exception, match="pebble has no arm64 images"):
        _cfg(arch="arm64")
    assert cli_main(["releases"]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines() if "pebble" in ln)
    assert row.split()[:3] == ["tinyos", "1.0", "pebble"]


def test_provisioning_speaks_the_family_package_manager(tiny: None, tmp_path: Path) -> None:
    cfg = _cfg(http_proxy="http://127.0.0.1:3128")
    cloud = BaseDisk(Path("/b.img"), "qcow2", "0" * 64, "test", 0, "cloud", None)
    assert steps.kernel_package(cloud, cfg) == "tiny-kernel-amd64"  # MAAS has no kernel
    assert not steps.purges_kernel(cloud, cfg)
    env = buildenv.build_env(cfg)
    assert env["TINYPKG_YES"] == "1" and "DEBIAN_FRONTEND" not in env
    guest = FakeGuest()
    s = steps.Session(
        cfg, cloud, cast(Any, None), cast(Any, guest), BuildLog(tmp_path / "build.log"),
        Progress(), "tcg", 60.0, env,
    )  # fmt: skip
    steps.step_setup(s)
    s.log.close()
    assert any(c.startswith("cat > /etc/tinypkg/proxy") for c in guest.commands)
    assert any("tinypkg sync" in c for c in guest.commands)
    assert not any("apt" in c or "dpkg" in c for c in guest.commands)


def test_manifest_and_inspect_read_the_family_database(tiny: None, tmp_path: Path) -> None:
    cfg = _cfg()
    fields = manifest.maas_fields(cfg, tmp_path / "x.tar.gz", "tgz")
    assert fields["title"].startswith("TinyOS 1.0 pebble")
    assert fields["base_image"] == "ubuntu/jammy"
    tree = Tree(
        entries={
            "etc/os-release": Entry(0o100644, 0, 1),
            DB: Entry(0o100644, 0, 1),
            "boot/vmlinuz-1": Entry(0o100644, 0, 1),
        },
        files={
            "etc/os-release": b"ID=tinyos\nPRETTY_NAME=TinyOS 1.0\n",
            DB: b"tinypkg 1.0 amd64\ntiny-grub-efi 2 amd64\n",
        },
    )
    report = InspectReport()
    check_tree(tree, "tar", "cloudimg", report)
    assert report.facts["os"] == "TinyOS 1.0"
    wanted = [p for p in report.problems if p.startswith("on a ")]
    assert wanted == [
        "on a BIOS machine curtin would install tiny-grub-pc: the deploy fails where MAAS "
        "has no mirror (rebuild with this imagebuilder)"
    ]
    assert any("TinyOS image without /curtin/curtin-hooks" in p for p in report.problems)


def test_inspect_reads_a_registered_family_database_out_of_a_tar(tiny: None) -> None:
    """The files inspect extracts are asked of the catalogue when it reads, not at import."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in ((DB, b"tinypkg 1.0 amd64\n"), ("etc/os-release", b"ID=tinyos\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    buf.seek(0)
    tree, _ = read_tar(buf)
    assert tree.files[DB] == b"tinypkg 1.0 amd64\n"


def test_the_installer_stage_serves_the_kind_answers(tiny: None, tmp_path: Path) -> None:
    cfg = _cfg(layout="flat", filetype="tgz")
    log = tmp_path / "install.log"
    with contextlib.ExitStack() as stack:
        url, seed = installer_build._answers(cfg, TINY_INSTALLER, tmp_path, stack, log, "b1")
        assert seed is None and url is not None and url.endswith("/answers.txt")
        local = re.sub(r"^http://10\.0\.2\.2:", "http://127.0.0.1:", url)
        with urllib.request.urlopen(local, timeout=10) as resp:
            body = resp.read().decode()
    assert body == "layout=flat firmware=uefi kernel=tiny-kernel-amd64\n"
    assert TINY_INSTALLER.cmdline(url, "amd64").startswith("tiny.answers=http://10.0.2.2:")


def test_the_bootstrap_recipe_is_the_family_tool(tiny: None, tmp_path: Path) -> None:
    rec = bootrecipe.recipe(_cfg(extra_packages="tiny-extra"))
    assert rec.packages == ("tiny-base", "tiny-extra", "tiny-kernel")
    assert rec.sources() == ["tiny http://archive.tinyos.invalid/tiny pebble"]
    assert rec.origin.startswith("tinystrap pebble")
    argv = rec.tool.argv(rootfs.job(rec, tmp_path))
    assert argv == ["tinystrap", "pebble", str(tmp_path), *rec.sources()]
    assert isinstance(rootfs.job(rec, tmp_path), BootstrapJob)
    other = dataclasses.replace(TINY, bootstrap=None)
    with pytest.raises(Exception, match="TinyOS bases cannot be bootstrapped"):
        bootrecipe._tool(other)


def test_answer_request_carries_plain_values() -> None:
    req = AnswerRequest("s", "http://m", "lvm", "bios", "k", "amd64")
    assert TINY_INSTALLER.answers(req) == "layout=lvm firmware=bios kernel=k\n"


_NAMED = re.compile(r"apt-get|dpkg|preseed|autoinstall")


def _offending_lines(root: Path) -> Mapping[str, list[int]]:
    found: dict[str, list[int]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("families/"):
            continue
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if _NAMED.search(line):
                found.setdefault(rel, []).append(no)
    return found


def test_no_stage_names_a_family_package_manager_or_installer() -> None:
    assert _offending_lines(PKG) == {}


def test_the_guard_finds_a_mention(tmp_path: Path) -> None:
    (tmp_path / "families").mkdir()
    (tmp_path / "families" / "ok.py").write_text("RUN = 'apt-get update'\n")
    (tmp_path / "stage.py").write_text("x = 1\nRUN = 'dpkg -l'\n")
    assert _offending_lines(tmp_path) == {"stage.py": [2]}
