"""The Debian netboot installer from a mirror (real apt against a signed local mirror),
the preseed answers, and the installer options' validation."""

from __future__ import annotations

import dataclasses
import gzip
import lzma
from pathlib import Path
from typing import Any

import pytest
import requests

from imagebuilder.config.choices import FileType, Firmware, Layout
from imagebuilder.config.tree import Config, resolve
from imagebuilder.errors import ConfigError, DownloadError, OfflineError, SourceError
from imagebuilder.families import debian_installer as preseed
from imagebuilder.installer import netboot, preflight
from imagebuilder.progress import Progress
from imagebuilder.sources import download
from tests.fakes.cloudimages import CloudImages, GpgKeys
from tests.fakes.debmirror import Fault, faults, publish_netboot
from tests.fakes.initrd import newc


def cfg_for(srv: CloudImages, tmp: Path, keyring: Path, **values: Any) -> Config:
    base = {
        "series": "bookworm",
        "layout": "flat",
        "mirror": f"{srv.url}/debian",
        "keyring": str(keyring),
        "cache_dir": str(tmp / "cache"),
    }
    return resolve({**base, **values}, environ={})


# ---- netboot: download through apt, verify, cache ----------------------------------------


def test_netboot_files_come_from_the_signed_mirror_and_are_cached(
    server: CloudImages, keys: GpgKeys, tmp_path: Path, progress: Progress
) -> None:
    pkg = publish_netboot(server, tmp_path)
    cfg = cfg_for(server, tmp_path, keys.keyring)
    nb = netboot.netboot_files(cfg, progress)
    assert nb.kernel.read_bytes() == pkg.kernel
    assert nb.initrd.read_bytes() == pkg.initrd
    assert (nb.package, nb.version) == (pkg.name, pkg.version)
    assert nb.date > 0 and nb.mirror.startswith(f"deb {server.url}/debian bookworm")
    assert nb.kernel.parent.parent == tmp_path / "cache" / "netboot"
    assert server.count(f"/debian/pool/main/d/{pkg.name}/{pkg.name}_{pkg.version}_all.deb") == 1
    # Offline, the cached copy is used without a single request.
    before = server.count()
    again = netboot.netboot_files(cfg_for(server, tmp_path, keys.keyring, offline=True), progress)
    assert again == nb and server.count() == before
    # No staging directories left behind.
    assert [p.name for p in (tmp_path / "cache" / "netboot").iterdir()] == [nb.kernel.parent.name]


def test_a_mirror_signed_by_another_key_is_refused(
    server: CloudImages, keys: GpgKeys, tmp_path: Path, progress: Progress
) -> None:
    publish_netboot(server, tmp_path, stranger=True)
    with pytest.raises(DownloadError, match="apt-get update for debian-installer-12-netboot-amd64"):
        netboot.netboot_files(cfg_for(server, tmp_path, keys.keyring), progress)
    assert not list((tmp_path / "cache" / "netboot").glob("debian-installer-*"))


def test_a_package_that_does_not_match_its_index_is_refused(
    server: CloudImages, keys: GpgKeys, tmp_path: Path, progress: Progress
) -> None:
    publish_netboot(server, tmp_path, tamper_deb=True)
    with pytest.raises(DownloadError, match="apt-get download"):
        netboot.netboot_files(cfg_for(server, tmp_path, keys.keyring), progress)
    assert not list((tmp_path / "cache" / "netboot").glob("debian-installer-*"))


def test_offline_with_an_empty_cache_names_the_package(
    server: CloudImages, keys: GpgKeys, tmp_path: Path, progress: Progress
) -> None:
    cfg = cfg_for(server, tmp_path, keys.keyring, offline=True)
    with pytest.raises(OfflineError, match="debian-installer-12-netboot-amd64 is not in the cache"):
        netboot.netboot_files(cfg, progress)
    assert server.count() == 0


def test_package_names_and_members() -> None:
    assert preseed.netboot_package("trixie", "arm64") == "debian-installer-13-netboot-arm64"
    kernel, initrd = preseed.member_paths("bookworm", "amd64")
    assert kernel.endswith("/12/amd64/text/debian-installer/amd64/linux")
    assert initrd.endswith("/initrd.gz")
    with pytest.raises(ConfigError, match="no Debian netboot installer is known for jammy"):
        preseed.netboot_package("jammy", "amd64")


def check_mirror(mirror: str, suite: str, arch: str, initrd: Path | None) -> int:
    """The preflight as the installer stage runs it for debian-installer."""
    return preflight.check_mirror(preseed.KIND, mirror, suite, arch, initrd)


# ---- the preseed ------------------------------------------------------------------------


def _answers(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith(("d-i ", "tasksel ", "popularity-contest ")):
            owner_key, _, rest = line.partition(" ")[2].partition(" ")
            out[owner_key] = rest.partition(" ")[2]
    return out


def render(layout: Layout, firmware: Firmware, **kw: Any) -> str:
    args: dict[str, Any] = {
        "suite": "bookworm",
        "mirror": "http://deb.debian.org/debian",
        "layout": layout.value,  # the family takes plain values, as the installer stage passes
        "firmware": firmware.value,
        "kernel": "linux-image-amd64",
    }
    return preseed.render_preseed(**{**args, **kw})


def test_flat_preseed_uefi_no_swap_no_password() -> None:
    text = render(Layout.FLAT, Firmware.UEFI, proxy="http://10.0.2.2:3128")
    a = _answers(text)
    assert a["mirror/http/hostname"] == "deb.debian.org"
    assert a["mirror/http/directory"] == "/debian"
    assert a["mirror/http/proxy"] == "http://10.0.2.2:3128"
    assert a["mirror/suite"] == "bookworm"
    assert a["partman-auto/method"] == "regular"
    recipe = a["partman-auto/expert_recipe"]
    assert "method{ efi }" in recipe and "biosgrub" not in recipe
    assert "mountpoint{ / }" in recipe and "swap" not in recipe
    assert a["partman-basicfilesystems/no_swap"] == "false"
    assert a["grub-installer/force-efi-extra-removable"] == "true"
    assert a["debian-installer/exit/poweroff"] == "true"
    assert a["passwd/make-user"] == "false"
    assert a["passwd/root-password-crypted"] == "!"  # locked: nobody can log in with it
    assert not [k for k in a if k in ("passwd/root-password", "passwd/user-password")]
    for pkg in preseed.PACKAGES:
        assert pkg in a["pkgsel/include"].split()
    assert a["base-installer/kernel/image"] == "linux-image-amd64"
    assert "${" not in text


def test_lvm_preseed_bios_has_a_root_lv_and_separate_boot() -> None:
    a = _answers(render(Layout.LVM, Firmware.BIOS))
    assert a["partman-auto/method"] == "lvm"
    recipe = a["partman-auto/expert_recipe"]
    assert "method{ biosgrub }" in recipe and "method{ efi }" not in recipe
    assert "lv_name{ root }" in recipe and "mountpoint{ /boot }" in recipe
    assert a["partman-auto-lvm/new_vg_name"] == preseed.VOLUME_GROUP
    assert a["partman-lvm/confirm_nooverwrite"] == "true"


def test_arm64_always_gets_an_esp_and_https_mirrors_keep_their_port() -> None:
    text = render(Layout.FLAT, Firmware.BIOS, arch="arm64", mirror="https://m.example:8443/d/")
    a = _answers(text)
    assert "method{ efi }" in a["partman-auto/expert_recipe"]
    assert a["mirror/protocol"] == "https"
    assert a["mirror/https/hostname"] == "m.example:8443"
    assert a["mirror/https/directory"] == "/d"


def test_preseed_refuses_odd_mirrors_and_cloudimg() -> None:
    with pytest.raises(ConfigError, match="needs an http"):
        render(Layout.FLAT, Firmware.UEFI, mirror="file:///srv/mirror")
    with pytest.raises(ConfigError, match="not an installer build"):
        render(Layout.CLOUDIMG, Firmware.UEFI)


def test_kernel_cmdline_is_unattended_on_the_serial_console() -> None:
    line = preseed.kernel_cmdline("http://10.0.2.2:8000/preseed.cfg", "amd64")
    words = line.split()
    assert {"auto=true", "priority=critical", "console=ttyS0,115200n8"} <= set(words)
    assert "url=http://10.0.2.2:8000/preseed.cfg" in words
    assert "console=ttyAMA0,115200n8" in preseed.kernel_cmdline("http://x/p", "arm64")


# ---- installer options ---------------------------------------------------------------------


def test_lvm_defaults_to_dd_gz_and_refuses_tar(tmp_path: Path) -> None:
    cfg = resolve({"series": "bookworm", "layout": "lvm"}, environ={})
    assert cfg.output.filetype is FileType.DDGZ
    assert resolve({"series": "bookworm", "layout": "lvm", "filetype": "ddxz"}, environ={})
    with pytest.raises(ConfigError, match="--layout lvm makes a whole-disk image"):
        resolve({"series": "bookworm", "layout": "lvm", "filetype": "tgz"}, environ={})
    assert resolve({"series": "bookworm", "layout": "flat"}, environ={}).output.filetype is (
        FileType.TGZ
    )


def test_installer_only_options_need_an_installer_layout(tmp_path: Path) -> None:
    debs = tmp_path / "debs"
    debs.mkdir()
    (debs / "x_1_all.deb").write_bytes(b"!<arch>\n")
    iso = tmp_path / "netinst.iso"
    iso.write_bytes(b"\0" * 2048)
    with pytest.raises(ConfigError, match="--packages is for installer builds"):
        resolve({"series": "bookworm", "packages": str(debs)}, environ={})
    with pytest.raises(ConfigError, match="--iso is for installer builds"):
        resolve({"series": "bookworm", "iso": str(iso)}, environ={})
    cfg = resolve(
        {"series": "bookworm", "layout": "flat", "packages": str(debs), "iso": str(iso)},
        environ={},
    )
    assert cfg.output.packages == debs and cfg.source.iso == iso
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="not a directory holding"):
        resolve({"series": "bookworm", "layout": "flat", "packages": str(empty)}, environ={})
    with pytest.raises(ConfigError, match=r"--iso: .* does not exist"):
        resolve({"series": "bookworm", "layout": "flat", "iso": str(tmp_path / "no")}, environ={})


# ---- preflight: does the mirror hold the installer's components? ------------------------------


def fake_initrd(tmp: Path) -> Path:
    status = b"Package: anna\nStatus: install ok installed\n\nPackage: netcfg\nStatus: x\n"
    initrd = tmp / "initrd.gz"
    members = {"./var/lib/dpkg/status": status, "lib/modules/6.1.0-50-amd64/": b""}
    initrd.write_bytes(gzip.compress(newc(members)))
    return initrd


def udeb_index() -> str:
    def st(name: str, prio: str) -> str:
        return f"Package: {name}\nPriority: {prio}\nFilename: pool/main/{name}.udeb\n"

    return "\n".join(
        [
            st("anna", "standard"),  # in the initrd already
            st("grub-installer", "standard"),
            st("partman-ext3", "standard"),
            st("finish-install", "required"),
            st("fancy-extra", "optional"),  # not downloaded by default
            st("nic-modules-6.1.0-50-amd64-di", "standard"),
            st("nic-modules-6.1.0-47-amd64-di", "standard"),  # another kernel's
        ]
    )


def test_initrd_packages_and_abi_are_read_from_the_cpio(tmp_path: Path) -> None:
    have, abi = preseed.initrd_packages(preflight.initrd_members(fake_initrd(tmp_path)))
    assert have == {"anna", "netcfg"} and abi == "6.1.0-50-amd64"
    needed = preseed.needed_udebs(udeb_index(), have, abi)
    assert sorted(needed) == [
        "finish-install",
        "grub-installer",
        "nic-modules-6.1.0-50-amd64-di",
        "partman-ext3",
    ]


def test_a_mirror_missing_installer_components_is_refused_before_booting(
    server: CloudImages, tmp_path: Path
) -> None:
    server.put(
        "/debian/dists/bookworm/main/debian-installer/binary-amd64/Packages.xz",
        lzma.compress(udeb_index().encode()),
    )
    for name in ("grub-installer", "finish-install", "nic-modules-6.1.0-50-amd64-di"):
        server.put(f"/debian/pool/main/{name}.udeb", b"!<arch>\n")
    initrd = fake_initrd(tmp_path)
    with pytest.raises(
        SourceError, match=r"lacks 1 of the 4 installer components .* \(partman-ext3\)"
    ):
        check_mirror(f"{server.url}/debian", "bookworm", "amd64", initrd)
    server.put("/debian/pool/main/partman-ext3.udeb", b"!<arch>\n")
    assert check_mirror(f"{server.url}/debian/", "bookworm", "amd64", initrd) == 4
    with pytest.raises(SourceError, match="has no installer index for trixie"):
        check_mirror(f"{server.url}/debian", "trixie", "amd64", initrd)


UDEB_INDEX = "/debian/dists/bookworm/main/debian-installer/binary-amd64/Packages.xz"


def udeb_mirror(server: CloudImages) -> None:
    """The index and three of the four udebs the fake initrd needs (partman-ext3 lacks)."""
    server.put(UDEB_INDEX, lzma.compress(udeb_index().encode()))
    for name in ("grub-installer", "finish-install", "nic-modules-6.1.0-50-amd64-di"):
        server.put(f"/debian/pool/main/{name}.udeb", b"!<arch>\n")


@pytest.fixture
def naps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits of the retry backoff, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(download, "RETRY", dataclasses.replace(download.RETRY, sleep=waits.append))
    return waits


def test_the_preflight_verdict_survives_refused_reset_and_busy_first_tries(
    server: CloudImages, tmp_path: Path, naps: list[float]
) -> None:
    udeb_mirror(server)
    broken: dict[str, Fault] = {
        UDEB_INDEX: "refuse",
        "/debian/pool/main/nic-modules-6.1.0-50-amd64-di.udeb": "refuse",
        "/debian/pool/main/grub-installer.udeb": "reset",
        "/debian/pool/main/finish-install.udeb": "busy",
    }
    for path, fault in broken.items():
        faults(server).add(path, fault)
    with pytest.raises(
        SourceError, match=r"lacks 1 of the 4 installer components .* \(partman-ext3\)"
    ):
        preflight.check_mirror(
            preseed.KIND, f"{server.url}/debian", "bookworm", "amd64", fake_initrd(tmp_path)
        )
    for path in broken:
        assert server.count(path) == 2, path  # the failed try, then the answer
    assert server.count("/debian/pool/main/partman-ext3.udeb") == 1  # a 404 is final
    assert naps == [0.25] * len(broken)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("refuse", "Remote end closed connection without response"),
     ("reset", "Connection reset by peer")],
)  # fmt: skip
def test_a_udeb_that_never_answers_is_cannot_reach_after_the_retries(
    server: CloudImages, tmp_path: Path, naps: list[float], fault: Fault, reason: str
) -> None:
    udeb_mirror(server)
    udeb = "/debian/pool/main/nic-modules-6.1.0-50-amd64-di.udeb"
    faults(server).add(udeb, fault, times=10)
    with pytest.raises(DownloadError) as err:
        preflight.check_mirror(
            preseed.KIND, f"{server.url}/debian", "bookworm", "amd64", fake_initrd(tmp_path)
        )
    text = str(err.value)
    assert text.startswith(f"cannot reach 127.0.0.1:{server.url.rsplit(':', 1)[1]}: {reason} ")
    assert text.endswith(f"({server.url}{udeb})") and "\n" not in text
    assert server.count(udeb) == download.RETRY.attempts == 4
    assert naps == [0.25, 0.5, 1.0]


def test_each_preflight_worker_asks_through_its_own_session(server: CloudImages) -> None:
    for i in range(40):
        server.put(f"/debian/pool/u{i}.udeb", b"!<arch>\n")
    made: list[requests.Session] = []
    closed: list[requests.Session] = []

    class Session(requests.Session):
        def close(self) -> None:
            closed.append(self)
            super().close()

    def new_session() -> requests.Session:
        made.append(Session())
        return made[-1]

    files = {f"u{i}": f"pool/u{i}.udeb" for i in range(40)} | {"gone": "pool/gone.udeb"}
    got = preflight.missing_files(f"{server.url}/debian", files, workers=4, new_session=new_session)
    assert got == ["gone"]
    assert 1 <= len(made) <= 4 and len({id(s) for s in made}) == len(made)
    assert closed == made  # each closed afterwards


def test_the_real_installer_waiting_on_a_question_is_recognised() -> None:
    """The last screen of a real Debian installer run here, whose mirror lacked udebs."""
    text = (Path(__file__).parent / "data" / "d-i-download-failed.serial").read_text(
        errors="replace"
    )
    assert (
        preseed.pending_question(text) == "Download installer components: Downloading a file failed"
    )
    assert preseed.pending_question(text.split("Loading additional")[0]) is None
