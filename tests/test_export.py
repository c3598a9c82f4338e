"""Export: compression, atomic outputs, manifests, and real disks exported end to end.

Root tests build an ext4 root holding every kind of entry (setuid, owners,
xattrs, a file capability, an ACL, hard links, symlinks, devices, a fifo, a
sparse file, long names), wrap it in a GPT qcow2 with an XBOOTLDR /boot, export
it, extract the output with curtin's exact tar command and compare the trees.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from imagebuilder.config.tree import (
    Compression,
    Config,
    DiskBackend,
    FileType,
    Layout,
    OutputConfig,
    ProvisionConfig,
)
from imagebuilder.errors import DiskError, ExportError
from imagebuilder.export import compress, manifest
from imagebuilder.export.curtin import BUILTIN_DIR
from imagebuilder.export.outfile import AtomicOutput
from imagebuilder.export.recipe import default_output, export_disk
from imagebuilder.families import apt
from imagebuilder.progress import Event, Progress
from imagebuilder.sources.basedisk import BaseDisk
from tests.diskfactory import (
    EPOCH,
    NEW,
    OLD,
    Part,
    curtin_extract,
    make_disk,
    minimal_root,
    populate,
    snapshot,
    xbootldr,
)


def cfg_for(ft: FileType = FileType.TGZ, **out: object) -> Config:
    return Config(
        series="jammy",
        output=OutputConfig(filetype=ft, source_date_epoch=EPOCH, **out),  # type: ignore[arg-type]
    )


def sample(n: int) -> bytes:
    rnd = random.Random(n)
    words = [bytes(rnd.getrandbits(8) for _ in range(rnd.randint(2, 9))) for _ in range(500)]
    return b" ".join(rnd.choice(words) for _ in range(n // 6))[:n]


def squeeze(codec: compress.Codec, parts: list[bytes | int]) -> bytes:
    """Compress ``parts`` (bytes, or an int meaning that many zeros via write_zeros)."""
    out: list[bytes] = []
    with compress.Compressor(out.append, codec) as c:
        for p in parts:
            if isinstance(p, int):
                c.write_zeros(p)
            else:
                c.write(p)
    return b"".join(out)


CODECS = [
    compress.gzip_codec("fast"),
    compress.gzip_codec("default"),
    compress.gzip_codec("best"),
    compress.xz_codec("fast"),
    compress.bzip2_codec("fast"),
]


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: f"{c.name}-{c.engine}-{c.level}")
def test_compressor_roundtrip_and_zero_runs_match_plain_zeros(codec: compress.Codec) -> None:
    data = sample(3 * codec.chunk_size // 2)
    zeros = 3 * codec.chunk_size + 12345
    fast = squeeze(codec, [data, zeros, data])
    slow = squeeze(codec, [data, bytes(zeros), data])
    assert fast == slow  # the cached zero chunk is exactly what compressing zeros gives
    tool = {"gzip": ["gzip", "-dc"], "xz": ["xz", "-dc"], "bzip2": ["bzip2", "-dc"]}[codec.name]
    plain = subprocess.run(tool, input=fast, capture_output=True, check=True).stdout
    assert plain == data + bytes(zeros) + data


def test_gzip_header_is_plain_rfc1952_without_name_or_mtime() -> None:
    out = squeeze(compress.gzip_codec("default"), [b"hello " * 1000])
    assert out[:4] == b"\x1f\x8b\x08\x00"  # deflate, no FNAME/FCOMMENT/FEXTRA
    assert out[4:8] == b"\0\0\0\0"  # mtime 0
    assert gzip.decompress(out) == b"hello " * 1000
    assert squeeze(compress.gzip_codec("default"), [b""])  # empty input: still a valid member
    assert gzip.decompress(squeeze(compress.gzip_codec("default"), [b""])) == b""


def test_atomic_output_removes_partial_on_error(tmp_path: Path) -> None:
    dest = tmp_path / "out.tar.gz"
    with pytest.raises(KeyboardInterrupt), AtomicOutput(dest) as sink:
        sink.write(b"partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with AtomicOutput(dest) as sink:
        sink.write(b"abc")
        sink.write_zeros(5000)
    assert dest.read_bytes() == b"abc" + bytes(5000)
    assert sink.sha.hexdigest() == hashlib.sha256(dest.read_bytes()).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == ["out.tar.gz"]


def test_atomic_output_needs_an_existing_directory(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="does not exist"), AtomicOutput(tmp_path / "no/x"):
        pass


def test_default_names_follow_packer_maas(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_output(cfg_for()).name == "custom-cloudimg.tar.gz"
    flat = dataclasses.replace(cfg_for(), layout=Layout.FLAT)
    assert default_output(flat).name == "custom-ubuntu.tar.gz"
    lvm = dataclasses.replace(cfg_for(FileType.DDGZ), layout=Layout.LVM)
    assert default_output(lvm) == tmp_path / "custom-ubuntu-lvm.dd.gz"


def test_sha256sums_line_is_replaced(tmp_path: Path) -> None:
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{'a' * 64} *other.tar.gz\n{'b' * 64} *x.tar.gz\n")
    manifest.update_sums(sums, "x.tar.gz", "c" * 64)
    assert sums.read_text() == f"{'a' * 64} *other.tar.gz\n{'c' * 64} *x.tar.gz\n"


def test_dpkg_status_lists_installed_packages_only() -> None:
    status = (
        b"Package: b\nStatus: install ok installed\nVersion: 2\nArchitecture: all\n\n"
        b"Package: a\nStatus: install ok installed\nVersion: 1\n"
        b"Description: x\n more\n\n"
        b"Package: c\nStatus: deinstall ok config-files\nVersion: 3\n"
    )
    assert apt.parse_dpkg_status(status) == [
        {"name": "a", "version": "1", "architecture": ""},
        {"name": "b", "version": "2", "architecture": "all"},
    ]


@pytest.fixture(scope="module")
def rich_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("building the test tree needs root (mknod, chown, setcap)")
    base = tmp_path_factory.mktemp("rich")
    src, boot = base / "src", base / "boot"
    src.mkdir()
    populate(src)
    boot.mkdir()
    (boot / "vmlinuz-6.1.0-test").write_bytes(b"kernel" * 1000)
    return make_disk(base / "disk.qcow2", [Part(src, 64), xbootldr(boot)])


@pytest.mark.root
def test_tar_export_reproduces_the_filesystem(rich_disk: Path, tmp_path: Path) -> None:
    before = hashlib.sha256(rich_disk.read_bytes()).hexdigest()
    out = tmp_path / "a.tar.gz"
    res = export_disk(rich_disk, cfg_for(), base=None, progress=Progress(), output=out)
    assert res.path == out and res.size == out.stat().st_size
    assert res.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert hashlib.sha256(rich_disk.read_bytes()).hexdigest() == before  # disk untouched
    assert list(tmp_path.glob("*.partial-*")) == []
    assert f"{res.sha256} *a.tar.gz" in res.sums_path.read_text()

    target = tmp_path / "t"
    curtin_extract(out, target)
    src = rich_disk.parent / "src"
    got, want = snapshot(target), snapshot(src)
    assert got.pop("boot/vmlinuz-6.1.0-test")[4] == hashlib.sha256(b"kernel" * 1000).hexdigest()
    hook = got.pop("curtin/curtin-hooks")
    assert hook[:3] == (stat.S_IFREG | 0o750, 0, 0)
    assert hook[4] == hashlib.sha256((BUILTIN_DIR / "curtin-hooks").read_bytes()).hexdigest()
    assert stat.S_IMODE(got.pop("curtin")[0]) == 0o755
    for rel in ("boot/lost+found", "lost+found"):
        got.pop(rel, None)
    mid = got.pop("etc/machine-id")
    assert mid[4] == hashlib.sha256(b"").hexdigest()  # emptied, metadata kept
    want.pop("etc/machine-id")
    got_boot = got.pop("boot")
    assert stat.S_ISDIR(got_boot[0])
    want.pop("boot")
    assert set(got) == set(want)
    for rel, w in want.items():
        g = got[rel]
        assert g[:7] == w[:7], rel  # mode, owners, rdev, content, xattrs (ACLs, caps), links
        assert g.mtime == min(w.mtime, EPOCH), rel  # mtimes clamped to SOURCE_DATE_EPOCH
    assert got["a.txt"][7] == OLD and got["new"][7] == EPOCH and NEW > EPOCH
    sparse = target / "sparse"
    assert sparse.stat().st_blocks * 512 < sparse.stat().st_size  # holes survived

    again = export_disk(
        rich_disk, cfg_for(), base=None, progress=Progress(), output=tmp_path / "b.tar.gz"
    )
    assert (tmp_path / "b.tar.gz").read_bytes() == out.read_bytes()  # byte-identical
    assert again.sha256 == res.sha256


@pytest.mark.root
def test_fuse_backend_gives_the_same_bytes_as_loop(rich_disk: Path, tmp_path: Path) -> None:
    loop = export_disk(
        rich_disk,
        cfg_for(disk_backend=DiskBackend.LOOP),
        base=None,
        progress=Progress(),
        output=tmp_path / "loop.tar.gz",
    )
    fuse = export_disk(
        rich_disk,
        cfg_for(disk_backend=DiskBackend.FUSE),
        base=None,
        progress=Progress(),
        output=tmp_path / "fuse.tar.gz",
    )
    assert fuse.sha256 == loop.sha256


@pytest.mark.root
@pytest.mark.parametrize("ft", [FileType.TXZ, FileType.TBZ])
def test_xz_and_bzip2_tars_extract_with_curtins_command(
    rich_disk: Path, tmp_path: Path, ft: FileType
) -> None:
    out = tmp_path / f"x.{ft.value}"
    cfg = dataclasses.replace(
        cfg_for(ft), output=dataclasses.replace(cfg_for(ft).output, compression=Compression.FAST)
    )
    export_disk(rich_disk, cfg, base=None, progress=Progress(), output=out)
    curtin_extract(out, tmp_path / "t", "--xz" if ft is FileType.TXZ else "--bzip2")
    assert (tmp_path / "t/suid").stat().st_mode & stat.S_ISUID


@pytest.fixture(scope="module")
def plain_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("plain")
    src = base / "src"
    minimal_root(src)
    (src / "etc/fstab").write_text("LABEL=cloudimg-rootfs / ext4 defaults 0 1\n")
    return make_disk(base / "disk.qcow2", [Part(src, 48)])


@pytest.mark.root
def test_dd_export_carries_curtin_and_is_reproducible(plain_disk: Path, tmp_path: Path) -> None:
    before = hashlib.sha256(plain_disk.read_bytes()).hexdigest()
    cfg = dataclasses.replace(
        cfg_for(FileType.DDGZ), provision=ProvisionConfig(kernel="linux-image-amd64")
    )
    a = export_disk(plain_disk, cfg, base=None, progress=Progress(), output=tmp_path / "a.dd.gz")
    b = export_disk(plain_disk, cfg, base=None, progress=Progress(), output=tmp_path / "b.dd.gz")
    assert a.sha256 == b.sha256  # debugfs with a fixed clock: byte-identical
    assert hashlib.sha256(plain_disk.read_bytes()).hexdigest() == before
    raw = tmp_path / "disk.raw"
    raw.write_bytes(gzip.decompress(a.path.read_bytes()))
    spec = f"{raw}?offset={1 << 20}"
    ls = subprocess.run(["debugfs", "-R", "ls -p /curtin", spec], capture_output=True, text=True)
    assert "/100750/0/0/curtin-hooks/" in ls.stdout
    pin = subprocess.run(["debugfs", "-R", "cat /curtin/CUSTOM_KERNEL", spec], capture_output=True)
    assert pin.stdout == b"linux-image-amd64\n"
    fsck = subprocess.run(["e2fsck", "-fn", spec], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout

    ddraw = dataclasses.replace(
        cfg, output=dataclasses.replace(cfg.output, filetype=FileType.DDRAW)
    )
    r = export_disk(plain_disk, ddraw, base=None, progress=Progress(), output=tmp_path / "r.dd")
    assert r.path.read_bytes() == raw.read_bytes()
    assert r.path.stat().st_blocks * 512 < r.size  # zero extents left as holes


@pytest.mark.root
def test_custom_hooks_dir_replaces_the_builtin_hook(plain_disk: Path, tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "curtin-hooks").write_text("#!/bin/sh\nexit 0\n")
    (hooks / "setup-bootloader").write_text("#!/bin/sh\n")
    (hooks / "setup-bootloader").chmod(0o755)
    (hooks / "README").write_text("notes\n")
    out = tmp_path / "c.tar.gz"
    export_disk(plain_disk, cfg_for(curtin_hooks=hooks), base=None, progress=Progress(), output=out)
    curtin_extract(out, tmp_path / "t")
    cdir = tmp_path / "t/curtin"
    assert (cdir / "curtin-hooks").read_text() == "#!/bin/sh\nexit 0\n"
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in cdir.iterdir()} == {
        "curtin-hooks": 0o750,
        "setup-bootloader": 0o750,
        "README": 0o644,
    }


def test_a_disk_without_a_linux_root_fails_cleanly(tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "empty.qcow2", [Part(None, 8, name="data", fstype="none")])
    out = tmp_path / "o" / "x.tar.gz"
    out.parent.mkdir()
    with pytest.raises(DiskError, match="no Linux root filesystem"):
        export_disk(disk, cfg_for(), base=None, progress=Progress(), output=out)
    assert list(out.parent.iterdir()) == []


@pytest.fixture(scope="module")
def xfs_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("xfs")
    return make_disk(base / "xfs.qcow2", [Part(None, 320, fstype="xfs")])


def test_xfs_root_with_fuse2fs_names_the_guestfs_backend(xfs_disk: Path, tmp_path: Path) -> None:
    with pytest.raises(DiskError) as err:
        export_disk(
            xfs_disk,
            cfg_for(disk_backend=DiskBackend.FUSE),
            base=None,
            progress=Progress(),
            output=tmp_path / "x.tar.gz",
        )
    assert err.value.hint is not None and "--disk-backend guestfs" in err.value.hint
    assert list(tmp_path.iterdir()) == []


@pytest.mark.vm
@pytest.mark.guestfs
def test_xfs_root_exports_through_libguestfs(xfs_disk: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.tar.gz"
    res = export_disk(xfs_disk, cfg_for(), base=None, progress=Progress(), output=out)
    assert "guestfs" in res.manifest_path.read_text()
    curtin_extract(out, tmp_path / "t")
    assert os.access(tmp_path / "t/curtin/curtin-hooks", os.X_OK)


@pytest.fixture(scope="module")
def xfs_rich_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("building an xfs root with files needs root (loop mount)")
    base = tmp_path_factory.mktemp("xfsrich")
    src = base / "src"
    src.mkdir()
    populate(src)  # hard links, a sparse file, ACLs, a capability, devices, long names
    (src / "etc/hostname").write_text("xfs-root\n")
    os.symlink("hostname", src / "etc/hostname.link")
    return make_disk(base / "xfs.qcow2", [Part(src, 320, fstype="xfs")])


def _no_guestfs(monkeypatch: pytest.MonkeyPatch) -> None:
    from imagebuilder.disk import appliance

    monkeypatch.setattr(appliance, "unavailable_reason", lambda: "no kernel in /boot (the test)")


@pytest.mark.root
def test_xfs_root_falls_back_to_a_loop_mount_where_libguestfs_cannot_run(
    xfs_rich_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_guestfs(monkeypatch)
    notes: list[str] = []
    out = tmp_path / "x.tar.gz"
    progress = Progress(lambda ev: notes.append(ev.name) if ev.kind == "info" else None)
    res = export_disk(xfs_rich_disk, cfg_for(), base=None, progress=progress, output=out)
    assert any("no kernel in /boot (the test)" in n and "loop mount" in n for n in notes)
    assert json.loads(res.manifest_path.read_text())["output"]["backend"] == "loop"
    curtin_extract(out, tmp_path / "t")
    assert (tmp_path / "t/etc/hostname").read_text() == "xfs-root\n"
    assert os.readlink(tmp_path / "t/etc/hostname.link") == "hostname"
    assert os.access(tmp_path / "t/curtin/curtin-hooks", os.X_OK)


def test_an_lvm_root_without_libguestfs_names_the_cause_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_guestfs(monkeypatch)
    raw = make_disk(tmp_path / "lvm.raw", [Part(None, 8, name="pv", fstype="none")], fmt="raw")
    with open(raw, "r+b") as f:
        f.seek((2048 * 512) + 512)
        f.write(b"LABELONE" + bytes(16) + b"LVM2 001")
    out = tmp_path / "o" / "x.tar.gz"
    out.parent.mkdir()
    with pytest.raises(DiskError) as err:
        export_disk(raw, cfg_for(), base=None, progress=Progress(), output=out)
    assert err.value.message == "cannot read an LVM root filesystem: no kernel in /boot (the test)"
    assert err.value.hint is not None and "host package linux-image-amd64" in err.value.hint
    assert list(out.parent.iterdir()) == []


@pytest.mark.root
@pytest.mark.vm
@pytest.mark.guestfs
def test_xfs_loop_fallback_export_is_byte_identical_to_libguestfs(
    xfs_rich_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    via_guestfs = export_disk(
        xfs_rich_disk, cfg_for(), base=None, progress=Progress(), output=tmp_path / "g.tar.gz"
    )
    _no_guestfs(monkeypatch)
    via_loop = export_disk(
        xfs_rich_disk, cfg_for(), base=None, progress=Progress(), output=tmp_path / "l.tar.gz"
    )
    assert via_loop.sha256 == via_guestfs.sha256


@pytest.mark.parametrize(
    ("codec", "mime"),
    [
        (compress.gzip_codec("default"), "application/gzip"),
        (compress.xz_codec("fast"), "application/x-xz"),
        (compress.bzip2_codec("fast"), "application/x-bzip2"),
    ],
)
def test_smtar_sniffs_the_compression(tmp_path: Path, codec: compress.Codec, mime: str) -> None:
    out = tmp_path / "x"
    out.write_bytes(squeeze(codec, [sample(100_000)]))
    # curtin's smtar runs `file --mime-type` on the first 1024 bytes to pick tar's flag.
    head = tmp_path / "head"
    head.write_bytes(out.read_bytes()[:1024])
    got = subprocess.run(["file", "--mime-type", "-b", head], capture_output=True, text=True)
    assert got.stdout.strip() == mime


@pytest.mark.root
@pytest.mark.parametrize("ft", [FileType.TGZ, FileType.DDGZ])
def test_without_any_epoch_exports_still_match(
    plain_disk: Path, tmp_path: Path, ft: FileType
) -> None:
    cfg = Config(series="jammy", output=OutputConfig(filetype=ft))
    a = export_disk(plain_disk, cfg, base=None, progress=Progress(), output=tmp_path / "a")
    b = export_disk(plain_disk, cfg, base=None, progress=Progress(), output=tmp_path / "b")
    assert a.sha256 == b.sha256
    epoch = json.loads(a.manifest_path.read_text())["output"]["source_date_epoch"]
    # A tar keeps mtimes as they are; a dd image's added files take the root's mtime.
    assert epoch is None if ft is FileType.TGZ else isinstance(epoch, int)


@pytest.mark.root
def test_manifest_records_base_config_packages_and_maas_command(
    plain_disk: Path, tmp_path: Path
) -> None:
    base = BaseDisk(
        plain_disk,
        "qcow2",
        "f" * 64,
        "https://example/jammy.img",
        1_650_000_000,
        "cloud",
        kernel="linux-image-virtual",
    )
    cfg = Config(series="jammy", output=OutputConfig())
    res = export_disk(plain_disk, cfg, base=base, progress=Progress(), output=tmp_path / "m.tar.gz")
    man = json.loads(res.manifest_path.read_text())
    assert man["output"]["sha256"] == res.sha256 and man["output"]["size"] == res.size
    assert man["output"]["source_date_epoch"] == 1_650_000_000  # the base image's date
    assert man["output"]["curtin"] == ["curtin-hooks", "CUSTOM_KERNEL"]
    assert (
        man["base"]["origin"] == "https://example/jammy.img" and man["base"]["sha256"] == "f" * 64
    )
    assert man["config"]["series"] == "jammy"
    assert [p["name"] for p in man["packages"]] == ["base-files"]
    assert man["maas"]["command"] == (
        "maas $PROFILE boot-resources create name=custom/ubuntu-jammy "
        "title='Ubuntu 22.04 jammy (imagebuilder)' architecture=amd64/generic filetype=tgz "
        "base_image=ubuntu/jammy content@=m.tar.gz"
    )


@pytest.mark.root
@pytest.mark.parametrize("ft", [FileType.TGZ, FileType.DDGZ])
def test_ctrl_c_leaves_no_partial_output_mount_or_process(
    rich_disk: Path, tmp_path: Path, ft: FileType
) -> None:
    def render(ev: Event) -> None:
        if ev.kind == "counter":
            raise KeyboardInterrupt

    work = tmp_path / "work"
    work.mkdir()
    cfg = cfg_for(ft, work_dir=work)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        export_disk(rich_disk, cfg, base=None, progress=Progress(render), output=out / "x")
    assert list(out.iterdir()) == [] and list(work.iterdir()) == []
    assert os.fspath(work) not in Path("/proc/mounts").read_text()
    losetup = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert os.fspath(work) not in losetup
    children = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, text=True)
    assert children.stdout.strip() == ""


def make_lvm_disk(path: Path) -> Path:
    """A GPT disk whose root is an ext4 logical volume (as Ubuntu's LVM layout), via libguestfs."""
    import guestfs

    sh_path = os.fspath(path)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", sh_path, "256M"], check=True)
    g = guestfs.GuestFS(python_return_dict=True)
    g.set_backend(os.environ.get("LIBGUESTFS_BACKEND", "direct"))
    g.set_backend_settings(["force_tcg"])
    g.add_drive_opts(sh_path, format="qcow2", readonly=False)
    g.launch()
    g.part_disk("/dev/sda", "gpt")
    g.pvcreate("/dev/sda1")
    g.vgcreate("ubuntu-vg", ["/dev/sda1"])
    g.lvcreate("ubuntu-lv", "ubuntu-vg", 200)
    g.mkfs("ext4", "/dev/ubuntu-vg/ubuntu-lv")
    g.mount("/dev/ubuntu-vg/ubuntu-lv", "/")
    for d in ("etc", "boot", "usr/bin", "usr/sbin"):
        g.mkdir_p("/" + d)
    g.write("/etc/os-release", b"ID=ubuntu\n")
    g.write("/etc/fstab", b"/dev/mapper/ubuntu--vg-ubuntu--lv / ext4 defaults 0 1\n")
    g.write("/etc/machine-id", b"")
    g.write("/boot/vmlinuz-6.8.0-1-generic", b"kernel")
    for exe in ("/usr/bin/cloud-init", "/usr/sbin/netplan"):
        g.write(exe, b"#!/bin/sh\n")
        g.chmod(0o755, exe)
    g.umount_all()
    g.shutdown()
    g.close()
    return path


@pytest.mark.vm
@pytest.mark.slow
@pytest.mark.guestfs
def test_lvm_dd_export_puts_curtin_on_the_root_lv(tmp_path: Path) -> None:
    from imagebuilder.export.outputlint import inspect_image

    disk = make_lvm_disk(tmp_path / "lvm.qcow2")
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    cfg = dataclasses.replace(cfg_for(FileType.DDGZ), layout=Layout.LVM)  # an installer build
    out = tmp_path / "custom-ubuntu-lvm.dd.gz"
    res = export_disk(disk, cfg, base=None, progress=Progress(), output=out)
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before
    report = inspect_image(res.path)
    assert report.facts["curtin_hooks"] == "mode 0750 uid 0"
    assert report.facts["fstab_entries"] == 1  # the disk's own fstab is kept
    assert report.problems == []
    # The installer hooks, on the root logical volume of the output.
    raw = tmp_path / "out.raw"
    with gzip.open(out, "rb") as src, open(raw, "wb") as dst:
        shutil.copyfileobj(src, dst)
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True)
    g.set_backend_settings(["force_tcg"])
    g.add_drive_opts(os.fspath(raw), format="raw", readonly=True)
    g.launch()
    try:
        g.mount_ro("/dev/ubuntu-vg/ubuntu-lv", "/")
        assert sorted(g.ls("/curtin")) == [
            "curtin-hooks",
            "install-custom-packages",
            "setup-bootloader",
        ]
        assert b"installer-built images" in g.read_file("/curtin/curtin-hooks")
    finally:
        g.shutdown()
        g.close()


def test_manifest_amend_keeps_the_rest(tmp_path: Path) -> None:
    from imagebuilder.export.manifest import amend

    m = tmp_path / "x.tar.gz.manifest.json"
    m.write_text('{"output": {"sha256": "ab"}}\n')
    amend(m, "lock", {"digest": "cd"})
    import json

    assert json.loads(m.read_text()) == {"output": {"sha256": "ab"}, "lock": {"digest": "cd"}}
