"""inspect: what MAAS would find in an output, for good and broken images."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from imagebuilder.config.tree import Config, FileType, OutputConfig
from imagebuilder.errors import InspectError
from imagebuilder.export import compress, tarstream
from imagebuilder.export.curtin import BUILTIN_DIR
from imagebuilder.export.outputlint import check_image, inspect_image
from imagebuilder.export.recipe import export_disk
from imagebuilder.progress import Progress
from tests.diskfactory import EPOCH, Part, make_disk, minimal_root

HOOK = (BUILTIN_DIR / "curtin-hooks").read_bytes()


def make_tar(
    root: Path, out: Path, codec: compress.Codec, *, hook_mode: int = 0o750, pin: str | None = None
) -> Path:
    ov = {
        "curtin": tarstream.Synthetic(stat.S_IFDIR | 0o755),
        "curtin/curtin-hooks": tarstream.Synthetic(stat.S_IFREG | hook_mode, data=HOOK),
    }
    if pin:
        ov["curtin/CUSTOM_KERNEL"] = tarstream.Synthetic(stat.S_IFREG | 0o644, data=pin.encode())
    with open(out, "wb") as f, compress.Compressor(f.write, codec) as c:
        tarstream.write_tree(c, root, epoch=EPOCH, overlay=ov)
    return out


def test_a_clean_tar_has_no_problems(tmp_path: Path) -> None:
    root = tmp_path / "root"
    minimal_root(root)
    out = make_tar(root, tmp_path / "ok.tar.gz", compress.gzip_codec("fast"))
    report = inspect_image(out)
    assert report.problems == []
    f = report.facts
    assert (f["filetype"], f["compression"]) == ("tgz", "gzip")
    assert f["curtin_hooks"] == "mode 0750 uid 0"
    assert (f["cloud_init"], f["netplan"], f["machine_id"]) == (True, True, "empty")
    assert f["ssh_host_keys"] == [] and f["kernels"] == [] and f["custom_kernel"] is None
    check_image(out)  # does not raise


@pytest.mark.parametrize(
    ("codec", "ft"), [(compress.xz_codec("fast"), "txz"), (compress.bzip2_codec("fast"), "tbz")]
)
def test_xz_and_bzip2_tars_are_recognised(tmp_path: Path, codec: compress.Codec, ft: str) -> None:
    root = tmp_path / "root"
    minimal_root(root)
    assert inspect_image(make_tar(root, tmp_path / "x", codec)).facts["filetype"] == ft


def test_each_deploy_breaking_problem_is_named(tmp_path: Path) -> None:
    root = tmp_path / "root"
    minimal_root(root)
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("secret")
    (root / "etc/passwd").write_text(
        "root:x:0:0::/root:/bin/sh\nimagebuilder-build:x:1000:1000::/home/imagebuilder-build:/bin/sh\n"
    )
    (root / "home/imagebuilder-build").mkdir()
    (root / "usr/bin/cloud-init").unlink()
    (root / "etc/fstab").write_text("LABEL=UEFI /boot/efi vfat defaults 0 1\n")
    out = make_tar(
        root,
        tmp_path / "bad.tar.gz",
        compress.gzip_codec("fast"),
        hook_mode=0o644,
        pin="linux-image-6.1.0-9-amd64",
    )
    with pytest.raises(InspectError) as err:
        check_image(out)
    text = " | ".join(err.value.problems)
    for needle in (
        "not an executable file",
        "machine-id is set",
        "ssh host keys",
        "imagebuilder-build",
        "cloud-init is missing",
        "/etc/fstab has entries",
        "pins linux-image-6.1.0-9-amd64, which is not installed",
        "has no kernel image",
    ):
        assert needle in text
    assert len(err.value.problems) == 8
    assert err.value.hint is not None and "imagebuilder inspect" in err.value.hint


def test_debian_needs_a_hook_and_a_kernel(tmp_path: Path) -> None:
    root = tmp_path / "root"
    minimal_root(root, distro="debian")
    out = tmp_path / "deb.tar.gz"
    with open(out, "wb") as f, compress.Compressor(f.write, compress.gzip_codec("fast")) as c:
        tarstream.write_tree(c, root, epoch=EPOCH)
    problems = inspect_image(out).problems
    assert any("without /curtin/curtin-hooks" in p for p in problems)
    assert any("Debian image without a kernel" in p for p in problems)


@pytest.fixture(scope="module")
def dd_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("dd")
    src = base / "src"
    minimal_root(src)
    (src / "boot/vmlinuz-6.1.0-test").write_text("kernel")
    (src / "etc/fstab").write_text("LABEL=cloudimg-rootfs / ext4 defaults 0 1\n")
    disk = make_disk(base / "disk.qcow2", [Part(src, 32)])
    cfg = Config(
        series="jammy", output=OutputConfig(filetype=FileType.DDGZ, source_date_epoch=EPOCH)
    )
    return export_disk(disk, cfg, base=None, progress=Progress(), output=base / "x.dd.gz").path


@pytest.mark.root
def test_a_dd_image_is_read_without_mounting(dd_image: Path) -> None:
    report = inspect_image(dd_image)
    assert report.problems == []
    assert report.facts["filetype"] == "ddgz"
    assert report.facts["kernels"] == ["vmlinuz-6.1.0-test"]
    assert report.facts["disk"]["root"] == "1:ext4"


@pytest.mark.root
def test_the_manifest_is_checked(dd_image: Path, tmp_path: Path) -> None:
    copy = tmp_path / dd_image.name
    copy.write_bytes(dd_image.read_bytes())
    man = json.loads(dd_image.with_name(dd_image.name + ".manifest.json").read_text())
    man["output"] = {**man["output"], "sha256": "0" * 64, "filetype": "tgz"}
    copy.with_name(copy.name + ".manifest.json").write_text(json.dumps(man))
    problems = inspect_image(copy).problems
    assert "the file does not match its manifest's sha256/size" in problems
    assert "the manifest says filetype tgz, the file is ddgz" in problems


def _status(*names: str) -> str:
    return "".join(
        f"Package: {n}\nStatus: install ok installed\nVersion: 1\nArchitecture: amd64\n\n"
        for n in ("dpkg", *names)
    )


EFI_SET = ("grub-efi-amd64", "grub-efi-amd64-bin", "grub-efi-amd64-signed", "shim-signed",
           "efibootmgr", "grub-pc-bin")  # fmt: skip


@pytest.mark.parametrize(
    ("packages", "debs", "expected"),
    [
        (EFI_SET, ("grub-pc_1_amd64.deb",), []),
        (EFI_SET, (), ["on a BIOS machine curtin would install grub-pc:"]),
        (EFI_SET[1:], ("grub-pc_1_amd64.deb",), ["on a UEFI machine curtin would "
                                                 "install grub-efi-amd64:"]),
        (("grub-pc", "grub-pc-bin", "grub-efi-amd64-bin"), ("grub-efi-amd64_1_amd64.deb",),
         ["on a UEFI machine curtin would install grub-efi-amd64-signed shim-signed "
          "efibootmgr:"]),
    ],
)  # fmt: skip
def test_packages_curtin_would_fetch_at_deploy_are_named_per_firmware(
    tmp_path: Path, packages: tuple[str, ...], debs: tuple[str, ...], expected: list[str]
) -> None:
    root = tmp_path / "root"
    minimal_root(root)
    (root / "var/lib/dpkg").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dpkg/status").write_text(_status(*packages))
    out = tmp_path / "x.tar.gz"
    ov = {
        "curtin": tarstream.Synthetic(stat.S_IFDIR | 0o755),
        "curtin/curtin-hooks": tarstream.Synthetic(stat.S_IFREG | 0o750, data=HOOK),
        "curtin/debs": tarstream.Synthetic(stat.S_IFDIR | 0o755),
        **{f"curtin/debs/{d}": tarstream.Synthetic(stat.S_IFREG | 0o644, data=b"x") for d in debs},
    }
    with open(out, "wb") as f, compress.Compressor(f.write, compress.gzip_codec("fast")) as c:
        tarstream.write_tree(c, root, epoch=EPOCH, overlay=ov)
    found = [p for p in inspect_image(out).problems if "curtin would install" in p]
    assert [p[: len(e)] for p, e in zip(found, expected, strict=False)] == expected
    assert len(found) == len(expected)
