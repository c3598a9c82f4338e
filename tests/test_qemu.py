"""The qemu command line, firmware files, the accelerator probe and the Machine's life."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from imagebuilder.config.tree import Accel, Firmware
from imagebuilder.errors import MachineError
from imagebuilder.progress import Event, Progress
from imagebuilder.vm import accel, qemu, qemu_cmdline, timeouts, uefi
from imagebuilder.vm.qemu_cmdline import MachineSpec, qemu_argv


def _spec(tmp_path: Path, **kw: object) -> MachineSpec:
    base: dict[str, object] = {
        "arch": "amd64",
        "accel": "tcg",
        "disk": tmp_path / "disk.qcow2",
        "serial_log": tmp_path / "serial.log",
        "qmp_socket": tmp_path / "qmp.sock",
        "ssh_port": 40022,
        "firmware_code": Path("/fw/CODE.fd"),
        "firmware_vars": tmp_path / "vars.fd",
        "seed": tmp_path / "seed.iso",
    }
    base.update(kw)
    return MachineSpec(**base)  # type: ignore[arg-type]


def _value(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, ev: Event) -> None:
        self.events.append(ev)

    def warnings(self) -> list[str]:
        return [e.name for e in self.events if e.kind == "warning"]


# ---- the command line ---------------------------------------------------------------


def test_amd64_uefi_argv(tmp_path: Path) -> None:
    argv = qemu_argv(_spec(tmp_path))
    assert argv[0] == "qemu-system-x86_64"
    assert _value(argv, "-machine") == ["q35"]
    assert _value(argv, "-accel") == ["tcg"] and _value(argv, "-cpu") == ["max"]
    assert _value(argv, "-m") == ["2048"] and _value(argv, "-smp") == ["2"]
    drives = _value(argv, "-drive")
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd" in drives
    assert f"if=pflash,format=raw,unit=1,file={tmp_path}/vars.fd" in drives
    disk = next(d for d in drives if "id=disk0" in d)
    assert f"file={tmp_path}/disk.qcow2" in disk and "format=qcow2" in disk
    seed = next(d for d in drives if "id=seed0" in d)
    assert "readonly=on" in seed and "format=raw" in seed
    (netdev,) = _value(argv, "-netdev")
    assert netdev == "user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22"
    assert _value(argv, "-serial") == [f"file:{tmp_path}/serial.log"]
    assert _value(argv, "-qmp") == [f"unix:{tmp_path}/qmp.sock,server=on,wait=off"]
    assert _value(argv, "-display") == ["none"] and "-vnc" not in argv
    assert "-nodefaults" in argv and "-no-reboot" not in argv  # the customize script may reboot


def test_kvm_uses_the_host_cpu(tmp_path: Path) -> None:
    argv = qemu_argv(_spec(tmp_path, accel="kvm"))
    assert _value(argv, "-accel") == ["kvm"] and _value(argv, "-cpu") == ["host"]


def test_bios_has_no_pflash(tmp_path: Path) -> None:
    argv = qemu_argv(
        _spec(tmp_path, firmware=Firmware.BIOS, firmware_code=None, firmware_vars=None)
    )
    assert not any("if=pflash" in d for d in _value(argv, "-drive"))


def test_uefi_without_firmware_files_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MachineError, match="firmware"):
        qemu_argv(_spec(tmp_path, firmware_code=None))


def test_arm64_argv(tmp_path: Path) -> None:
    argv = qemu_argv(_spec(tmp_path, arch="arm64"))
    assert argv[0] == "qemu-system-aarch64"
    assert _value(argv, "-machine") == ["virt,gic-version=max"]
    assert _value(argv, "-cpu") == ["max,pauth-impdef=on"]  # cheap pointer auth under TCG
    assert sum("if=pflash" in d for d in _value(argv, "-drive")) == 2


def test_timeouts_scale_for_emulated_arm64_only() -> None:
    assert timeouts.boot_timeout("tcg", arch="arm64") == 2 * timeouts.boot_timeout("tcg")
    assert timeouts.poweroff_timeout("tcg", arch="arm64") == 2 * timeouts.poweroff_timeout("tcg")
    assert timeouts.boot_timeout("kvm", arch="arm64") == timeouts.boot_timeout("kvm")
    assert timeouts.boot_timeout("tcg", 42.0, arch="arm64") == 42.0  # --timeout wins


def test_vnc_is_loopback_only(tmp_path: Path) -> None:
    argv = qemu_argv(_spec(tmp_path, vnc=True))
    assert _value(argv, "-vnc") == ["127.0.0.1:0,to=99"]
    assert "-display" not in argv and "VGA" in _value(argv, "-device")


def test_commas_in_paths_are_escaped(tmp_path: Path) -> None:
    argv = qemu_argv(_spec(tmp_path, disk=Path("/a,b/disk.qcow2")))
    assert any("file=/a,,b/disk.qcow2" in d for d in _value(argv, "-drive"))


def test_no_seed_no_seed_drive(tmp_path: Path) -> None:
    argv = qemu_argv(_spec(tmp_path, seed=None))
    assert not any("seed0" in d for d in _value(argv, "-drive"))


# ---- firmware ----------------------------------------------------------------------


@pytest.mark.skipif(not uefi.UEFI_FIRMWARE["amd64"][1].exists(), reason="ovmf not installed")
def test_uefi_vars_are_a_private_copy(tmp_path: Path) -> None:
    code, vars_ = uefi.prepare_firmware("amd64", Firmware.UEFI, tmp_path)
    assert code == uefi.UEFI_FIRMWARE["amd64"][0]
    assert vars_ is not None and vars_.parent == tmp_path
    assert vars_.read_bytes() == uefi.UEFI_FIRMWARE["amd64"][1].read_bytes()
    assert uefi.prepare_firmware("amd64", Firmware.BIOS, tmp_path) == (None, None)


def test_arm64_firmware_is_padded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, template = tmp_path / "CODE.fd", tmp_path / "VARS.fd"
    code.write_bytes(b"\x01" * 2 * 1024 * 1024)
    template.write_bytes(b"\x02" * 1024)
    monkeypatch.setitem(uefi.UEFI_FIRMWARE, "arm64", (code, template))
    build = tmp_path / "build"
    build.mkdir()
    got_code, got_vars = uefi.prepare_firmware("arm64", Firmware.UEFI, build)
    assert got_code is not None and got_vars is not None
    assert got_code.parent == build and got_vars.parent == build
    assert got_code.stat().st_size == got_vars.stat().st_size == 64 << 20
    assert got_code.read_bytes()[:4] == b"\x01" * 4 and code.stat().st_size == 2 << 20


def test_missing_firmware_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(uefi.UEFI_FIRMWARE, "amd64", (tmp_path / "no", tmp_path / "no2"))
    with pytest.raises(MachineError) as err:
        uefi.prepare_firmware("amd64", Firmware.UEFI, tmp_path)
    assert err.value.hint is not None and "ovmf" in err.value.hint


def test_read_tail_strips_escape_sequences(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(b"\x1b[2J\x1b[01;01Hline1\r\n" + b"".join(b"l%d\n" % i for i in range(50)))
    tail = qemu.read_tail(log, 30).splitlines()
    assert len(tail) == 30 and tail[-1] == "l49"
    assert qemu.read_tail(log, 100).splitlines()[0] == "line1"
    assert qemu.read_tail(tmp_path / "missing") == ""


def test_a_failed_boot_is_recognised_on_the_console(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    m = qemu.Machine(spec, stderr_log=tmp_path / "qemu.log")
    spec.serial_log.write_bytes(
        b"[    1.0] Linux version 6.1\r\nBegin: Running /scripts/local-block\r\n"
    )
    assert m.fatal_console_line() is None
    with open(spec.serial_log, "ab") as fh:
        fh.write(b"ALERT!  /dev/loop0p1 does not exist.  Dropping to a shell!\r\n(initramfs) ")
    assert m.fatal_console_line() == "ALERT!  /dev/loop0p1 does not exist.  Dropping to a shell!"
    with pytest.raises(MachineError, match="failed to boot: ALERT") as err:
        with open(spec.serial_log, "ab") as fh:
            fh.write(b"\x1b[0mKernel panic - not syncing: VFS\r\n")
        m.check()
    assert "Kernel panic" in err.value.details and "Linux version" in err.value.details


def test_free_port_is_free() -> None:
    import socket

    port = qemu_cmdline.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


# ---- the accelerator probe ------------------------------------------------------------


@pytest.mark.skipif(shutil.which("as") is None, reason="GNU as (binutils) not installed")
def test_probe_payload_is_its_source(tmp_path: Path) -> None:
    (tmp_path / "p.S").write_text(accel.PAYLOAD_SOURCE)
    subprocess.run(["as", "--32", "-o", tmp_path / "p.o", tmp_path / "p.S"], check=True)
    subprocess.run(
        ["ld", "-m", "elf_i386", "-Ttext=0x7c00", "--oformat=binary", "-o", tmp_path / "p.bin",
         tmp_path / "p.o"],
        check=True,
    )  # fmt: skip
    assert (tmp_path / "p.bin").read_bytes() == accel.PAYLOAD
    sector = accel.boot_sector()
    assert len(sector) == 512 and sector.endswith(b"\x55\xaa")


@pytest.mark.vm
def test_probe_payload_completes_under_tcg() -> None:
    result = accel.run_probe("tcg")
    assert result.accel == "tcg" and result.reason == ""
    assert result.seconds < 5


@pytest.mark.vm
def test_probe_detects_a_hung_guest() -> None:
    start = time.monotonic()
    result = accel.run_probe("tcg", deadline=2.0, extra=["-S"])  # -S: the CPU never starts
    assert result.accel == "tcg"
    assert "hung before the guest ran any code" in result.reason
    assert time.monotonic() - start < 8


@pytest.mark.vm
def test_probe_reports_a_qemu_failure() -> None:
    result = accel.run_probe("tcg", extra=["-device", "no-such-device"])
    assert result.accel == "tcg" and "exited with 1" in result.reason
    assert "no-such-device" in result.reason


def test_tcg_is_taken_as_asked() -> None:
    assert accel.probe_accel("amd64", Progress(), requested=Accel.TCG) == "tcg"


def test_foreign_arch_is_emulated_without_warning() -> None:
    rec = Recorder()
    assert accel.probe_accel("arm64", Progress(rec), requested=Accel.AUTO) == "tcg"
    assert rec.warnings() == []


def test_forced_kvm_needs_kvm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "kvm_unusable", lambda arch: "/dev/kvm does not exist")
    with pytest.raises(MachineError, match="/dev/kvm does not exist"):
        accel.probe_accel("amd64", Progress(), requested=Accel.KVM)


def test_auto_without_kvm_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    accel.forget()
    monkeypatch.setattr(accel, "kvm_unusable", lambda arch: "/dev/kvm does not exist")
    rec = Recorder()
    progress = Progress(rec)
    for _ in range(3):
        assert accel.probe_accel("amd64", progress, requested=Accel.AUTO) == "tcg"
    assert len(rec.warnings()) == 1 and "/dev/kvm does not exist" in rec.warnings()[0]
    accel.forget()


@pytest.mark.vm
def test_auto_on_this_host_is_functional_and_cached(tmp_path: Path) -> None:
    """On hosts where KVM hangs this falls back to TCG with one warning; else KVM, silently."""
    accel.forget()
    rec = Recorder()
    progress = Progress(rec)
    chosen = accel.probe_accel("amd64", progress, requested=Accel.AUTO, cache_dir=tmp_path)
    assert chosen in ("kvm", "tcg")
    assert len(rec.warnings()) == (1 if chosen == "tcg" else 0)
    if chosen == "tcg" and accel.kvm_unusable("amd64") is None:
        assert "KVM is not usable" in rec.warnings()[0]
        assert any(e.name == "accel-probe" for e in rec.events)  # it really probed
    start = time.monotonic()
    assert accel.probe_accel("amd64", progress, requested=Accel.AUTO) == chosen
    assert time.monotonic() - start < 0.1 and len(rec.warnings()) == (chosen == "tcg")
    # a new process (simulated) reads the per-boot cache instead of probing again
    accel.forget()
    rec2 = Recorder()
    again = accel.probe_accel("amd64", Progress(rec2), requested=Accel.AUTO, cache_dir=tmp_path)
    assert again == chosen and not any(e.name == "accel-probe" for e in rec2.events)
    accel.forget()


# ---- the Machine ---------------------------------------------------------------------


@pytest.fixture
def probe_disk(tmp_path: Path) -> Path:
    disk = tmp_path / "probe.img"
    disk.write_bytes(accel.boot_sector())
    with open(disk, "r+b") as fh:
        fh.truncate(1 << 20)
    return disk


def _machine_spec(tmp_path: Path, disk: Path, **kw: object) -> MachineSpec:
    return _spec(
        tmp_path, disk=disk, disk_format="raw", firmware=Firmware.BIOS, firmware_code=None,
        firmware_vars=None, seed=None, ssh_port=qemu_cmdline.free_port(), memory=64, cpus=1, **kw,
    )  # fmt: skip


@pytest.mark.vm
def test_machine_runs_and_is_always_stopped(tmp_path: Path, probe_disk: Path) -> None:
    spec = _machine_spec(tmp_path, probe_disk)
    with qemu.Machine(spec, stderr_log=tmp_path / "qemu.log") as m:
        assert m.alive()
        assert m.qmp("query-status")["status"] == "running"
        deadline = time.monotonic() + 10
        while "M" not in spec.serial_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert spec.serial_log.read_text() == "RPLTBM"
        assert m.serial_tail() == "RPLTBM"
        assert not m.powerdown(1.0)  # the payload has no ACPI: still running
        proc = m.proc
    assert proc is not None and proc.poll() is not None
    assert not spec.qmp_socket.exists()


@pytest.mark.vm
def test_machine_that_exits_early_raises_with_serial_tail(tmp_path: Path, probe_disk: Path) -> None:
    spec = _machine_spec(
        tmp_path, probe_disk, extra=("-device", "isa-debug-exit,iobase=0xf4,iosize=0x04")
    )
    with qemu.Machine(spec, stderr_log=tmp_path / "qemu.log") as m:
        assert m.wait_exit(10)
        with pytest.raises(MachineError, match="exited unexpectedly") as err:
            m.check()
    assert "RPLTBM" in err.value.details


@pytest.mark.vm
def test_machine_that_cannot_start_says_why(tmp_path: Path, probe_disk: Path) -> None:
    spec = _machine_spec(tmp_path, probe_disk, extra=("-device", "no-such-device"))
    with pytest.raises(MachineError) as err, qemu.Machine(spec, stderr_log=tmp_path / "q.log"):
        pass
    assert "no-such-device" in err.value.details


@pytest.mark.vm
def test_console_tee_and_vnc_on_loopback(tmp_path: Path, probe_disk: Path) -> None:
    spec = _machine_spec(tmp_path, probe_disk, vnc=True)
    seen: list[str] = []
    with qemu.Machine(spec, stderr_log=tmp_path / "qemu.log", console=seen.append) as m:
        address = m.vnc_address()
        assert address is not None and address.startswith("127.0.0.1:59")
        port = int(address.rsplit(":", 1)[1])
        with socket.socket() as s:
            s.settimeout(5)
            s.connect(("127.0.0.1", port))
            assert s.recv(12).startswith(b"RFB ")
        deadline = time.monotonic() + 10
        while "M" not in spec.serial_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        with open(spec.serial_log, "a") as fh:
            fh.write("\nconsole line\n")
        while "console line" not in seen and time.monotonic() < deadline:
            time.sleep(0.1)
    assert seen[-2:] == ["RPLTBM", "console line"]
