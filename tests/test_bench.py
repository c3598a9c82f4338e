"""The benchmark harness: statistics, verdicts, the table, and the reference pipelines."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from bench import disks, harness, reference, report
from bench.__main__ import main as bench_main
from bench.harness import Context, Ratio, Row, Sample

HOST = {
    "cores": 2,
    "cpu": "Test CPU",
    "memory_gib": 4.0,
    "accelerator": "tcg (kvm unusable: test)",
    "date": "2025-01-01T00:00:00",
}


def test_median_and_ratio() -> None:
    assert harness.median([3.0, 1.0, 2.0]) == 2.0
    assert harness.median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert math.isnan(harness.median([]))
    assert harness.ratio(10.0, 2.0) == 5.0
    assert math.isnan(harness.ratio(1.0, 0.0))
    assert math.isnan(harness.ratio(float("nan"), 2.0))


def test_runs_needed_follows_the_one_minute_rule() -> None:
    assert harness.runs_needed(59.9) == 3
    assert harness.runs_needed(60.0) == 1
    assert harness.runs_needed(5.0, minimum=5) == 5


def test_row_medians_scratch_and_json() -> None:
    row = Row("export", "x")
    for wall, size, disk in ((3.0, 100, 150), (1.0, 100, 100), (2.0, 100, 300)):
        row.samples.append(Sample(wall=wall, output_size=size, peak_disk=disk, peak_rss=7))
    assert row.median("wall") == 2.0
    assert row.median("scratch") == 50.0  # scratch = peak disk beyond the output: 50, 0, 200
    data = row.to_json()
    assert data["runs"] == 3 and data["median"]["wall"] == 2.0
    failed = Row("export", "y", status="failed: boom")
    assert not failed.ok and math.isnan(failed.median("wall"))
    assert failed.to_json()["median"]["wall"] is None


def test_ratio_verdicts() -> None:
    assert Ratio("e", "speed", 6.0, ">= 5").met is True
    assert Ratio("e", "speed", 4.9, ">= 5").met is False
    assert Ratio("e", "size", 1.12, "<= 1.12").met is True
    assert Ratio("e", "size", 1.13, "<= 1.12").met is False
    assert Ratio("e", "info", 3.0).met is None
    assert Ratio("e", "missing", float("nan"), ">= 5").met is None


def test_table_shows_host_rows_reasons_and_verdicts() -> None:
    ok = Row("export", "imagebuilder --compression default", [Sample(2.0, 268_000_000)])
    skipped = Row("boot", "imagebuilder", status="skipped: imagebuilder.vm.ssh is not there yet")
    ratios = [
        Ratio("export", "default: speed-up vs packer-maas", 12.5, ">= 5"),
        Ratio("export", "default: size vs packer-maas", 1.2, "<= 1.12"),
    ]
    text = report.format_table([ok, skipped], ratios, HOST)
    lines = text.splitlines()
    assert lines[0].startswith("host: 2 cores (Test CPU)") and "accelerator tcg" in lines[0]
    header = next(ln for ln in lines if ln.startswith("benchmark"))
    row_line = next(ln for ln in lines if "compression default" in ln)
    # right-aligned numeric columns end where their header ends
    assert row_line.index("2.00") + 4 == header.index("wall s") + len("wall s")
    assert "268.0" in row_line
    assert "skipped: imagebuilder.vm.ssh is not there yet" in text
    assert "12.50x" in text and "target >= 5" in text
    speed = next(ln for ln in lines if "speed-up vs" in ln)
    size = next(ln for ln in lines if "size vs" in ln)
    assert speed.endswith(" MET") and not speed.endswith("NOT MET")
    assert size.endswith("NOT MET")


def test_write_json_is_complete_and_null_for_missing(tmp_path: Path) -> None:
    rows = [Row("raw", "gzip -c", [Sample(1.5, 10)]), Row("raw", "x", status="failed: no")]
    ratios = [Ratio("raw", "speed", float("nan"))]
    path = report.write_json(rows, ratios, HOST, ["raw"], directory=tmp_path)
    data = json.loads(path.read_text())
    assert data["command"] == "python -m bench raw"
    assert data["host"]["cores"] == 2
    assert data["rows"][0]["median"]["wall"] == 1.5
    assert data["rows"][1]["status"] == "failed: no"
    assert data["ratios"][0]["value"] is None
    assert not list(tmp_path.glob("*.partial"))


def test_packer_maas_command_lines_match_its_scripts() -> None:
    tmp, disk = Path("/t"), Path("/o/packer-cloudimg")
    sock = tmp / "qemu-img.sock"
    assert reference.qemu_nbd_argv(sock, "qcow2", disk) == [
        "qemu-nbd", "--socket=/t/qemu-img.sock", "--format=qcow2", "--shared=10",
        "/o/packer-cloudimg",
    ]  # fmt: skip
    assert reference.nbdfuse_argv(tmp / "p1", sock, 1) == [
        "nbdfuse", "/t/p1", "--command", "nbdkit", "-s", "nbd", "socket=/t/qemu-img.sock",
        "--filter=partition", "partition=1",
    ]  # fmt: skip
    assert reference.nbdfuse_argv(tmp / "disk", sock)[-1] == "socket=/t/qemu-img.sock"
    assert reference.fuse2fs_argv(tmp / "p1", tmp / "root") == [
        "fuse2fs", "/t/p1/nbd", "/t/root", "-o", "fakeroot",
    ]  # fmt: skip
    tar = reference.tar_name(Path("/w/custom-cloudimg.tar.gz"))
    assert tar == Path("/w/custom-cloudimg.tar")
    assert reference.tar_create_argv(tar, tmp / "root") == [
        "tar", "-Scpf", "/w/custom-cloudimg.tar", "--acls", "--selinux", "--xattrs",
        "--one-file-system", "--exclude-backups", "-C", "/t/root", ".",
    ]  # fmt: skip
    assert reference.tar_append_boot_argv(tar, tmp) == [
        "tar", "-Supf", "/w/custom-cloudimg.tar", "--acls", "--selinux", "--xattrs",
        "-C", "/t", "boot/",
    ]  # fmt: skip
    assert reference.parted_argv(tmp / "disk") == ["parted", "-ms", "/t/disk/nbd", "print"]
    assert reference.compress_argv(tar, "pigz") == [
        "pigz", "--best", "--force", "/w/custom-cloudimg.tar",
    ]  # fmt: skip
    assert reference.virt_tar_out_argv(disk) == ["virt-tar-out", "-a", str(disk), "/", "-"]


def test_bls_boot_partition_from_parted_output() -> None:
    noble = (
        "BYT;\n/t/disk/nbd:3758MB:file:512:512:gpt:Unknown:;\n"
        "1:1128MB:3758MB:2630MB:ext4::;\n14:1049kB:5243kB:4194kB:::bios_grub;\n"
        "15:5243kB:116MB:111MB:fat32::boot, esp;\n16:116MB:1128MB:1012MB:ext4::bls_boot;\n"
    )
    assert reference.bls_boot_partition(noble) == 16
    assert reference.bls_boot_partition(noble.replace("bls_boot", "")) is None


def test_sfdisk_script_places_partition_one_at_1mib() -> None:
    script = disks.sfdisk_script(8 * disks.GIB, disks.GIB)
    assert "start=2048, size=2097152," in script and "name=cloudimg-rootfs" in script
    with pytest.raises(ValueError):
        disks.sfdisk_script(disks.GIB, disks.GIB)


def test_disk_usage_counts_allocated_bytes_only(tmp_path: Path) -> None:
    sparse = tmp_path / "sub" / "sparse"
    sparse.parent.mkdir()
    with sparse.open("wb") as f:
        f.truncate(100 * disks.MIB)
        f.write(b"x" * disks.MIB)
        os.fsync(f.fileno())
    used = harness.disk_usage(tmp_path)
    assert disks.MIB <= used < 4 * disks.MIB


def test_tree_rss_sees_child_processes() -> None:
    proc = subprocess.Popen(["sleep", "5"])
    try:
        time.sleep(0.1)
        assert proc.pid in harness.descendants(os.getpid())
        assert harness.tree_rss(os.getpid()) > 100_000
    finally:
        proc.kill()
        proc.wait()


def test_measure_keeps_the_disk_peak_and_output_size(tmp_path: Path) -> None:
    out = tmp_path / "out.bin"

    def step() -> Path:
        tmp = tmp_path / "big.tmp"
        tmp.write_bytes(b"y" * (8 * disks.MIB))
        os.sync()
        time.sleep(0.3)  # the monitor polls every 0.1 s
        tmp.unlink()
        out.write_bytes(b"z" * 1000)
        return out

    sample = harness.measure(step, scratch=tmp_path)
    assert sample.output_size == 1000
    assert sample.peak_disk >= 8 * disks.MIB
    assert sample.scratch >= 8 * disks.MIB - 4096
    assert sample.wall >= 0.3


def test_run_row_records_failures_as_status(tmp_path: Path) -> None:
    from imagebuilder.errors import CommandError

    calls: list[int] = []

    def once(i: int) -> Sample:
        calls.append(i)
        if i == 1:
            raise CommandError(["tool", "x"], 2, "the reason\n")
        return Sample(wall=0.1)

    row = harness.run_row(Row("b", "c"), once, Context(scratch=tmp_path))
    assert calls == [0, 1] and row.status.startswith("failed: tool x failed (exit 2)")
    assert "the reason" in row.status


def test_unknown_benchmark_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as ei:
        bench_main(["nonsense"])
    assert ei.value.code == 2


def _tiny_root(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "etc/hostname").write_text("bench\n")
    (root / "usr/share").mkdir(parents=True)
    (root / "usr/share/data.txt").write_text("imagebuilder bench\n" * 1000)
    (root / "usr/bin").mkdir()
    (root / "bin").symlink_to("usr/bin")
    return root


@pytest.mark.root
def test_packer_maas_post_processor_runs_and_leaves_nothing(tmp_path: Path) -> None:
    for tool in ("qemu-nbd", "nbdfuse", "nbdkit", "fuse2fs", "parted", "qemu-img"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    base = disks.make_disk(
        tmp_path / "base.qcow2",
        size=64 * disks.MIB,
        part_size=32 * disks.MIB,
        populate=_tiny_root(tmp_path / "root"),
        fmt="qcow2",
    )
    before = base.read_bytes()
    disk = disks.overlay(base, "qcow2", tmp_path / "overlay.qcow2")
    out = tmp_path / "out" / "custom-cloudimg.tar.gz"
    out.parent.mkdir()
    tmp_dir = tmp_path / "packer-maas-XXXX"
    assert reference.packer_maas_export(disk, "qcow2", out, tmp_dir) == out
    assert not tmp_dir.exists() and not (tmp_path / "out/custom-cloudimg.tar").exists()
    assert str(tmp_path) not in Path("/proc/mounts").read_text()
    assert base.read_bytes() == before  # its writes went to the overlay
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    with tarfile.open(out) as tf:
        names = tf.getnames()
        machine_id = tf.extractfile("./etc/machine-id")
        assert machine_id is not None and machine_id.read() == b""  # truncated, as theirs
        data = tf.extractfile("./usr/share/data.txt")
        assert data is not None and data.read() == b"imagebuilder bench\n" * 1000
    assert "./bin" in names and "./lost+found" in names


def test_markdown_report_has_both_tables() -> None:
    rows = [Row("raw", "gzip -c (level 6)", [Sample(40.0, 15_000_000)])]
    ratios = [Ratio("raw", "ddgz default: speed-up vs gzip -c", 20.0)]
    text = report.format_markdown(rows, ratios, HOST, "python -m bench raw")
    assert text.startswith("Command: `python -m bench raw`")
    assert "| raw | gzip -c (level 6) | 1 | 40.00 | 15.0 |" in text
    assert "| raw | ddgz default: speed-up vs gzip -c | 20.00x |" in text


def test_poller_first_attempt_at_once_then_waits_interval() -> None:
    from bench.boot import Poller

    times: list[float] = []
    start = time.monotonic()

    def attempt() -> bool:
        times.append(time.monotonic() - start)
        return len(times) == 3

    p = Poller(attempt, 0.2, start)
    p.start()
    p.join(5)
    assert p.attempts == 3 and p.ready_after is not None
    assert times[0] < 0.1 and 0.19 < times[1] - times[0] < 0.35 and times[2] - times[1] >= 0.19


def test_build_stages_group_the_vm_steps() -> None:
    from bench.build import stage_note, stages

    extra = {"stage:base": 90.0, "python_rss": 5.0, "stage:boot": 60.0,
             "stage:wait-cloud-init": 20.0, "stage:setup": 10.0, "stage:hygiene": 5.0,
             "stage:poweroff": 4.0, "stage:vm": 101.0, "stage:export": 8.0}  # fmt: skip
    st = stages(Sample(200.0, extra=extra))
    assert list(st) == ["base", "boot", "provision", "poweroff", "vm other", "export"]
    assert st["provision"] == 35.0 and st["vm other"] == 2.0
    assert stage_note(Sample(200.0, extra=extra)).startswith("base 90.0 s, boot 60.0 s, prov")


def test_warm_cache_reads_data_and_skips_holes(tmp_path: Path) -> None:
    f = tmp_path / "sparse"
    with f.open("wb") as fh:
        fh.truncate(64 * disks.GIB)  # reading this through would take minutes
        fh.seek(32 * disks.GIB)
        fh.write(b"data" * 1024)
    start = time.monotonic()
    disks.warm_cache(f)
    assert time.monotonic() - start < 5


def test_observer_sees_keys_and_port_and_restores() -> None:
    from bench.boot import Observer
    from imagebuilder.vm import provision, qemu_cmdline

    real_keys, real_port = vars(provision)["BuildKeys"], qemu_cmdline.free_port
    started: list[float] = []
    with Observer(started.append) as obs:
        keys = vars(provision)["BuildKeys"].generate("bench")
        port = qemu_cmdline.free_port()
        qemu_cmdline.free_port()  # a retry: pollers are started once
    assert obs.keys is keys and obs.port != 0 and port > 0
    assert len(started) == 1 and started[0] == obs.t0
    assert vars(provision)["BuildKeys"] is real_keys and qemu_cmdline.free_port is real_port
