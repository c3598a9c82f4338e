"""``imagebuilder diff``: real tarballs and real GPT disks made here, each difference seen.

Tarballs are written with tarfile (PAX, with xattrs) and compressed with gzip, xz,
bzip2 and zstd; disks are partitioned by the real sfdisk. Nothing is mocked.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard

from imagebuilder.errors import ConfigError
from imagebuilder.repro.diff_disks import partition_table
from imagebuilder.repro.diff_outputs import Difference, diff_outputs, render
from imagebuilder.run import run

MTIME = 1715083200


@dataclass
class Item:
    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    uname: str = "root"
    gname: str = "root"
    mtime: float = MTIME
    link: str = ""
    dev: tuple[int, int] = (0, 0)
    pax: dict[str, str] = field(default_factory=dict)


def tree() -> list[Item]:
    return [
        Item("./etc", type=tarfile.DIRTYPE, mode=0o755),
        Item("./etc/hostname", b"localhost\n"),
        Item("./etc/shadow", b"root:*:19000:0:99999:7:::\n", mode=0o640, gid=42, gname="shadow"),
        Item(
            "./usr/bin/ping",
            b"\x7fELF...",
            mode=0o755,
            pax={"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"},
        ),
        Item(
            "./etc/localtime", type=tarfile.SYMTYPE, link="/usr/share/zoneinfo/Etc/UTC", mode=0o777
        ),
        Item("./usr/bin/pong", type=tarfile.LNKTYPE, link="./usr/bin/ping", mode=0o755),
        Item("./dev/null", type=tarfile.CHRTYPE, dev=(1, 3), mode=0o666),
    ]


def write_tar(path: Path, items: list[Item], *, compress: str = "gz", level: int = 6) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for it in items:
            ti = tarfile.TarInfo(it.name)
            ti.type, ti.mode, ti.uid, ti.gid = it.type, it.mode, it.uid, it.gid
            ti.uname, ti.gname, ti.mtime, ti.linkname = it.uname, it.gname, it.mtime, it.link
            ti.devmajor, ti.devminor = it.dev
            ti.pax_headers = dict(it.pax)
            ti.size = len(it.data) if it.type == tarfile.REGTYPE else 0
            tar.addfile(ti, io.BytesIO(it.data) if ti.size else None)
    raw = buf.getvalue()
    if compress == "gz":
        data = gzip.compress(raw, compresslevel=level, mtime=0)
    elif compress == "xz":
        data = lzma.compress(raw)
    elif compress == "bz2":
        data = bz2.compress(raw)
    elif compress == "zst":
        data = zstandard.ZstdCompressor().compress(raw)
    else:
        data = raw
    path.write_bytes(data)
    return path


def changed(**what: object) -> list[Item]:
    """tree() with the attributes in ``what`` (``<name>__<attr>``) replaced."""
    items = tree()
    for key, value in what.items():
        name, attr = key.split("__")
        target = next(i for i in items if i.name.endswith("/" + name.replace("_", "-")))
        setattr(target, attr, value)
    return items


def kinds(diffs: list[Difference]) -> list[tuple[str, str]]:
    return [(d.kind, d.path) for d in diffs]


@pytest.mark.parametrize("compress", ["gz", "xz", "bz2", "zst", "none"])
def test_identical_outputs_print_nothing(tmp_path: Path, compress: str) -> None:
    a = write_tar(tmp_path / "a", tree(), compress=compress)
    b = write_tar(tmp_path / "b", tree(), compress=compress)
    assert diff_outputs(a, b) == []
    assert render(diff_outputs(a, b)) == ""


@pytest.mark.parametrize(
    ("change", "kind", "path", "detail"),
    [
        ({"hostname__data": b"other\n"}, "content", "etc/hostname", "10 bytes sha256"),
        ({"shadow__mode": 0o600}, "mode", "etc/shadow", "0640 vs 0600"),
        ({"shadow__gid": 0}, "owner", "etc/shadow", "0:42 (root:shadow) vs 0:0"),
        ({"shadow__gname": "root"}, "owner", "etc/shadow", "(root:shadow) vs 0:42 (root:root)"),
        ({"hostname__mtime": MTIME + 1}, "mtime", "etc/hostname", "1715083201 = 2024-05-07"),
        (
            {"localtime__link": "/usr/share/zoneinfo/UTC"},
            "link",
            "etc/localtime",
            "-> /usr/share/zoneinfo/Etc/UTC vs -> /usr/share/zoneinfo/UTC",
        ),
        ({"pong__link": "./etc/hostname"}, "link", "usr/bin/pong", "-> usr/bin/ping vs"),
        ({"ping__pax": {}}, "xattrs", "usr/bin/ping", "security.capability only in A"),
        (
            {"ping__pax": {"SCHILY.xattr.security.capability": "x"}},
            "xattrs",
            "usr/bin/ping",
            "security.capability value differs",
        ),
        ({"null__dev": (1, 5)}, "device", "dev/null", "1:3 vs 1:5"),
        ({"hostname__type": tarfile.DIRTYPE}, "type", "etc/hostname", "file vs directory"),
        ({"hostname__pax": {"atime": "1"}}, "header", "etc/hostname", "atime absent vs 1"),
    ],
)
def test_each_kind_of_difference_is_named(
    tmp_path: Path, change: dict[str, object], kind: str, path: str, detail: str
) -> None:
    a = write_tar(tmp_path / "a.tar.gz", tree())
    b = write_tar(tmp_path / "b.tar.xz", changed(**change), compress="xz")
    diffs = diff_outputs(a, b)
    assert kinds(diffs) == [(kind, path)], diffs
    assert detail in diffs[0].detail
    assert render(diffs).startswith(f"{kind:<9}{path}  (")


def test_files_in_only_one_archive(tmp_path: Path) -> None:
    items = tree()
    extra = [*items[:1], Item("./etc/motd", b"hi\n"), *items[2:]]  # no hostname, one motd
    a = write_tar(tmp_path / "a.tgz", items)
    b = write_tar(tmp_path / "b.tgz", extra)
    diffs = diff_outputs(a, b)
    assert kinds(diffs) == [("only-in", "etc/hostname"), ("only-in", "etc/motd")]
    assert diffs[0].detail == "only in A (a.tgz)" and diffs[1].detail == "only in B (b.tgz)"


def test_several_differences_are_all_listed_sorted_by_path(tmp_path: Path) -> None:
    a = write_tar(tmp_path / "a", tree())
    b = write_tar(
        tmp_path / "b", changed(shadow__mode=0o600, shadow__mtime=1.5, hostname__data=b"x")
    )
    assert kinds(diff_outputs(a, b)) == [
        ("content", "etc/hostname"),
        ("mode", "etc/shadow"),
        ("mtime", "etc/shadow"),
    ]


def test_member_order_and_compression_differences(tmp_path: Path) -> None:
    a = write_tar(tmp_path / "a", tree())
    b = write_tar(tmp_path / "b", list(reversed(tree())))
    [d] = diff_outputs(a, b)
    assert d.kind == "order" and "first at #0: etc vs dev/null" in d.detail

    c = write_tar(tmp_path / "c", tree(), level=1)
    [d] = diff_outputs(a, c)
    assert d.kind == "bytes" and "identical tar streams, compressed differently" in d.detail


def test_tar_against_a_disk_and_unreadable_inputs(tmp_path: Path) -> None:
    a = write_tar(tmp_path / "a", tree())
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    [d] = diff_outputs(a, disk)
    assert d.kind == "type" and "only a is a tar archive" in d.detail
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(a.read_bytes()[:200])
    other = write_tar(tmp_path / "b", changed(hostname__data=b"x"))
    with pytest.raises(ConfigError) as info:
        diff_outputs(broken, other)
    assert "broken.tar.gz" in info.value.message
    with pytest.raises(ConfigError):
        diff_outputs(a, tmp_path / "missing")


# ---- raw disks -----------------------------------------------------------------------------

LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


def make_disk(path: Path, *, root_uuid: str = "11111111-2222-3333-4444-555555555555") -> Path:
    """8 MiB GPT: partition 15 (ESP, 1 MiB at 1 MiB), partition 1 (root, 2 MiB on)."""
    path.write_bytes(bytes(8 << 20))
    script = (
        "label: gpt\nlabel-id: 0D1B1C1A-0000-4000-8000-000000000001\n"
        f"start=4096, size=8192, type={LINUX}, uuid={root_uuid}, name=root\n"
        f"start=2048, size=2048, type={ESP}, uuid=AAAAAAAA-0000-4000-8000-000000000015\n"
    )
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", path], input=script.encode())
    return path


def poke(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def test_partition_table_reads_gpt(tmp_path: Path) -> None:
    table = partition_table(make_disk(tmp_path / "d").read_bytes()[: 1 << 20])
    assert table.scheme == "gpt"
    assert [(p.number, p.start, p.sectors, p.type, p.name) for p in table.parts] == [
        (1, 4096, 8192, LINUX, "root"),
        (2, 2048, 2048, ESP, ""),
    ]


def test_identical_disks_and_differing_byte_ranges(tmp_path: Path) -> None:
    a = make_disk(tmp_path / "a.img")
    b = make_disk(tmp_path / "b.img")
    assert diff_outputs(a, b) == []
    poke(b, 4096 * 512 + 5000, b"\xff" * 10)  # partition 1, page 1
    poke(b, 4096 * 512 + 3 * 4096, b"\xff")  # partition 1, page 3
    poke(b, 7 << 20, b"\xee")  # past partition 1 (ends at 6 MiB)
    bgz = tmp_path / "b.img.gz"
    bgz.write_bytes(gzip.compress(b.read_bytes()))
    diffs = diff_outputs(a, bgz)
    assert kinds(diffs) == [("bytes", "partition 1 (root)"), ("bytes", "outside any partition")]
    base = 4096 * 512
    assert diffs[0].detail == (
        f"8.0 KiB differ in 2 range(s): 0x{base + 4096:x}-0x{base + 8191:x}, "
        f"0x{base + 3 * 4096:x}-0x{base + 4 * 4096 - 1:x}"
    )
    assert "0x700000-0x700fff" in diffs[1].detail


def test_partition_table_and_size_differences(tmp_path: Path) -> None:
    a = make_disk(tmp_path / "a.img")
    b = make_disk(tmp_path / "b.img", root_uuid="99999999-2222-3333-4444-555555555555")
    with b.open("ab") as f:
        f.write(bytes(4096))
    diffs = diff_outputs(a, tmp_path / "b.img")
    assert ("size", "disk") in kinds(diffs)
    part = next(d for d in diffs if d.kind == "partition")
    assert part.path == "partition 1 (root)" and "guid 11111111" in part.detail
    regions = [d.path for d in diffs if d.kind == "bytes"]
    assert "partition table (GPT)" in regions
