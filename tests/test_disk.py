"""Disk access: partition tables, root and /boot detection, servers and read-only mounts."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from imagebuilder.config.tree import DiskBackend
from imagebuilder.disk import access, backends, parttable, root_files, root_mount
from imagebuilder.errors import DiskError
from tests.diskfactory import Part, make_disk, minimal_root, sh, xbootldr


def file_reader(path: Path) -> tuple[parttable.Reader, int]:
    fd = os.open(path, os.O_RDONLY)
    return (lambda off, n: os.pread(fd, n, off)), os.fstat(fd).st_size


def mkext4(raw: Path, offset: int, size_mib: int, label: str) -> None:
    sh(
        "mke2fs",
        "-q",
        "-F",
        "-t",
        "ext4",
        "-L",
        label,
        "-E",
        f"offset={offset}",
        raw,
        f"{size_mib}M",
    )


def test_gpt_root_by_name_and_xbootldr(tmp_path: Path) -> None:
    raw = make_disk(
        tmp_path / "d.raw",
        [Part(None, 40, name="big", label="data"), Part(None, 20), xbootldr(None)],
        fmt="raw",
    )
    layout = parttable.read_layout(*file_reader(raw))
    assert layout.table == "gpt"
    assert [(p.number, p.fstype) for p in layout.partitions] == [
        (1, "ext4"),
        (2, "ext4"),
        (3, "ext4"),
    ]
    root = parttable.pick_root(layout)
    assert root is not None and root.number == 2  # named cloudimg-rootfs, though smaller
    boot = parttable.pick_boot(layout)
    assert boot is not None and boot.number == 3 and boot.label == "BOOT"


def test_mbr_with_logical_partitions_picks_the_largest_linux_fs(tmp_path: Path) -> None:
    raw = tmp_path / "mbr.raw"
    with open(raw, "wb") as f:
        f.truncate(100 << 20)
    table = "label: dos\n2048,20M,83\n,+,5\n,10M,83\n,40M,83\n"
    subprocess.run(["sfdisk", "-q", raw], input=table.encode(), check=True, capture_output=True)
    dump = subprocess.run(["sfdisk", "-J", raw], capture_output=True, check=True).stdout
    import json

    parts = json.loads(dump)["partitiontable"]["partitions"]
    for p in parts:
        if p["type"] == "83":
            mkext4(raw, p["start"] * 512, p["size"] * 512 >> 20, "p")
    layout = parttable.read_layout(*file_reader(raw))
    assert layout.table == "mbr"
    assert [p.number for p in layout.partitions] == [1, 5, 6]
    root = parttable.pick_root(layout)
    assert root is not None and root.number == 6 and root.fstype == "ext4"


def test_whole_disk_filesystem_and_labels(tmp_path: Path) -> None:
    raw = tmp_path / "fs.raw"
    with open(raw, "wb") as f:
        f.truncate(16 << 20)
    mkext4(raw, 0, 16, "cloudimg-rootfs")
    layout = parttable.read_layout(*file_reader(raw))
    assert layout.table == "none"
    root = parttable.pick_root(layout)
    assert root is not None and (root.number, root.start, root.label) == (0, 0, "cloudimg-rootfs")


def test_lvm_pv_needs_guestfs(tmp_path: Path) -> None:
    raw = make_disk(tmp_path / "lvm.raw", [Part(None, 8, name="pv", fstype="none")], fmt="raw")
    with open(raw, "r+b") as f:  # an LVM2 label in sector 1 of the partition
        f.seek((1 << 20) + 512)
        f.write(b"LABELONE" + bytes(16) + b"LVM2 001")
    layout = parttable.read_layout(*file_reader(raw))
    root = parttable.pick_root(layout)
    assert root is not None and root.fstype == "LVM2_member"
    assert backends.choose_backend(DiskBackend.AUTO, root) is DiskBackend.GUESTFS
    with pytest.raises(DiskError) as err:
        backends.choose_backend(DiskBackend.FUSE, root)
    assert err.value.hint == "use --disk-backend guestfs"


def test_backend_choice_for_ext4(monkeypatch: pytest.MonkeyPatch) -> None:
    ext4 = parttable.Partition(1, 0, 1 << 20, "", fstype="ext4")
    monkeypatch.setattr(backends, "is_root", lambda: True)
    assert backends.choose_backend(DiskBackend.AUTO, ext4) is DiskBackend.LOOP
    monkeypatch.setattr(backends, "is_root", lambda: False)
    assert backends.choose_backend(DiskBackend.AUTO, ext4) is DiskBackend.FUSE
    with pytest.raises(DiskError, match="needs root"):
        backends.choose_backend(DiskBackend.LOOP, ext4)


@pytest.mark.parametrize("fmt", ["qcow2", "raw", "vmdk", "vhdx"])
def test_serve_reads_any_qemu_format(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src"
    minimal_root(src)
    path = make_disk(tmp_path / f"d.{fmt}", [Part(src, 24), xbootldr(None)], fmt=fmt)
    info = access.probe(path)
    assert info.format == fmt and info.virtual_size == 43 << 20
    with access.serve(info, tmp_path) as server:
        layout = server.layout()
    root = root_mount.find_root(layout)
    assert (root.number, root.start, root.fstype) == (1, 1 << 20, "ext4")


@pytest.mark.parametrize("backend", [DiskBackend.LOOP, DiskBackend.FUSE])
def test_mounts_are_read_only_and_leave_the_chain_untouched(
    tmp_path: Path, backend: DiskBackend
) -> None:
    if backend is DiskBackend.LOOP and not backends.is_root():
        pytest.skip("loop mounts need root")
    src = tmp_path / "src"
    minimal_root(src)
    boot = tmp_path / "bootsrc"
    boot.mkdir()
    (boot / "vmlinuz-1").write_text("k")
    base = make_disk(tmp_path / "base.qcow2", [Part(src, 24), xbootldr(boot)])
    top = tmp_path / "top.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, top)
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (base, top)}
    info = access.probe(top)
    assert info.backing is not None and info.backing.endswith("base.qcow2")
    work = tmp_path / "work"
    work.mkdir()
    with access.serve(info, work, fuse=True) as server:
        layout = server.layout()
        with root_mount.mount_root(server, layout, backend, work) as view:
            assert (view.root / "etc/os-release").read_text().startswith("ID=ubuntu")
            assert view.boot is not None and (view.boot / "vmlinuz-1").read_text() == "k"
            with pytest.raises(OSError):
                (view.root / "etc/new").write_text("x")
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (base, top)} == digests
    assert not os.path.ismount(work / "root")


def test_unclean_journal_is_detected(tmp_path: Path) -> None:
    raw = tmp_path / "fs.raw"
    with open(raw, "wb") as f:
        f.truncate(16 << 20)
    mkext4(raw, 0, 16, "x")
    sh("debugfs", "-w", "-R", "feature needs_recovery", raw)
    root = parttable.pick_root(parttable.read_layout(*file_reader(raw)))
    assert root is not None and root.needs_recovery


def test_missing_disk_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DiskError, match="does not exist"):
        access.probe(tmp_path / "nope.qcow2")


BOOT_UUID = "5b7e8a2c-2a51-4d7e-9a0c-0f1e2d3c4b5a"


@pytest.mark.parametrize(
    "spec",
    [
        f"UUID={BOOT_UUID}",
        "LABEL=kernels",
        "PARTLABEL=bootpart",
        f"/dev/disk/by-uuid/{BOOT_UUID}",
        "/dev/sda2",
    ],
)
def test_boot_partition_from_fstab(tmp_path: Path, spec: str) -> None:
    raw = make_disk(
        tmp_path / "d.raw",
        [Part(None, 24), Part(None, 16, name="bootpart", label="kernels", uuid=BOOT_UUID)],
        fmt="raw",
    )
    layout = parttable.read_layout(*file_reader(raw))
    assert layout.partitions[1].uuid == BOOT_UUID
    fstab = (
        f"# comment\nLABEL=cloudimg-rootfs / ext4 defaults 0 1\n{spec} /boot ext4 defaults 0 2\n"
    )
    boot = parttable.pick_boot(layout, fstab)
    if spec.startswith("/dev/sda"):
        assert boot is None  # device names mean nothing inside an image
    else:
        assert boot is not None and boot.number == 2
    partuuid = layout.partitions[1].partuuid
    by_partuuid = parttable.pick_boot(layout, f"PARTUUID={partuuid.upper()} /boot ext4 0 0\n")
    assert by_partuuid is not None and by_partuuid.number == 2


@pytest.mark.root
def test_separate_boot_from_fstab_is_mounted_beside_root(tmp_path: Path) -> None:
    src, bsrc = tmp_path / "src", tmp_path / "bsrc"
    minimal_root(src)
    (src / "etc/fstab").write_text(f"UUID={BOOT_UUID} /boot ext4 defaults 0 2\n")
    bsrc.mkdir()
    (bsrc / "vmlinuz-9").write_text("k")
    path = make_disk(
        tmp_path / "d.qcow2", [Part(src, 24), Part(bsrc, 16, name="b", uuid=BOOT_UUID)]
    )
    work = tmp_path / "w"
    work.mkdir()
    with access.serve(access.probe(path), work, fuse=True) as server:
        layout = server.layout()
        with root_mount.mount_root(server, layout, DiskBackend.LOOP, work) as view:
            assert view.boot is not None and (view.boot / "vmlinuz-9").read_text() == "k"


def test_reads_inside_a_mounted_root_never_follow_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/fstab").symlink_to("/etc/hostname")
    (root / "var").symlink_to("/var")
    (root / "etc/real").write_text("x")
    assert root_files.read_in_root(root, "etc/real") == b"x"
    assert root_files.read_in_root(root, "etc/fstab") is None
    assert root_files.read_in_root(root, "var/lib/dpkg/status") is None
    assert root_files.listdir_in_root(root, "var") is None
    assert root_files.listdir_in_root(root, "etc") == ["fstab", "real"]
