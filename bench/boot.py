"""Benchmark 2: qemu start to the first SSH command, against the floor and packer's polling.

- imagebuilder: ``provision.build_vm`` (overlay, seed ISO, keys, accelerator choice,
  firmware, qemu, ``Guest.wait_ready``), then the first command (``true``) over SSH.
  Timed from entering ``build_vm``, so its own preparation counts against it.
- the floor: the same overlay, seed and qemu command line started bare with
  ``run.spawn``, and a login + ``true`` attempted every 0.1 s after each failure.
- packer's strategy: in the same bare boot, a second poller that tries at once and
  then sleeps 5 s after every failure (packer's SSH communicator). Sharing the boot
  removes boot-to-boot variance from the comparison.

Each login pins the guest's per-build host key. This module does not print.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from imagebuilder.basedisk import BaseDisk
from imagebuilder.config import Config
from imagebuilder.errors import ImageBuilderError

from . import disks
from .common import missing
from .harness import Context, Ratio, Row, Sample, measure, ratio, run_row

if TYPE_CHECKING:
    from imagebuilder.keys import BuildKeys

BENCH = "boot"
FLOOR_INTERVAL = 0.1
PACKER_INTERVAL = 5.0
FLOOR_OVERLAP = 4  # floor attempts in flight at once
#: Seconds a boot may take before the run counts as failed (a TCG boot takes ~1 min).
BOOT_TIMEOUT = 420


def accelerator() -> str:
    """What the build VM uses here: "kvm", or "tcg (why KVM is not usable)"."""
    from imagebuilder.accel import probe_accel
    from imagebuilder.config import Accel
    from imagebuilder.progress import Event, Progress

    warnings: list[str] = []

    def keep(ev: Event) -> None:
        if ev.kind == "warning":
            warnings.append(ev.name)

    accel = probe_accel(
        "amd64", Progress(keep), requested=Accel.AUTO, cache_dir=disks.cache_dirs()[0]
    )
    if accel == "tcg" and warnings:
        reason = warnings[0].removeprefix("KVM is not usable: ").split("; falling back")[0]
        return f"tcg (kvm unusable: {reason})"
    return accel


def try_login(port: int, user: str, keys: BuildKeys, *, banner_timeout: float = 5.0) -> bool:
    """One attempt: connect, authenticate with the build key, run ``true``; True on success."""
    import paramiko

    pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(keys.client.private_openssh))
    host_key = paramiko.Ed25519Key(data=keys.host.public_blob)
    client = paramiko.SSHClient()
    client.get_host_keys().add(f"[127.0.0.1]:{port}", host_key.get_name(), host_key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect("127.0.0.1", port, username=user, pkey=pkey, timeout=2.0,
                       banner_timeout=banner_timeout, auth_timeout=10.0,
                       allow_agent=False, look_for_keys=False)  # fmt: skip
        _, stdout, _ = client.exec_command("true", timeout=10.0)
        return stdout.channel.recv_exit_status() == 0
    except (paramiko.SSHException, EOFError, OSError):
        return False
    finally:
        client.close()


class Poller(threading.Thread):
    """Login attempts from ``start`` until one succeeds; ``ready_after`` is when it did.

    With ``overlap`` 1 (packer): an attempt at once, then ``interval`` s after each
    failure. With ``overlap`` N > 1 (the floor): a new attempt every ``interval`` s
    while fewer than N are in flight, so an attempt stuck waiting for a banner (the
    guest's network not up yet) does not delay the next one.
    """

    def __init__(
        self, attempt: Callable[[], bool], interval: float, start: float, *, overlap: int = 1
    ) -> None:
        super().__init__(daemon=True, name=f"poll-{interval}")
        self.attempt, self.interval, self.t0, self.overlap = attempt, interval, start, overlap
        self.ready_after: float | None = None
        self.attempts = 0
        self.stop = threading.Event()
        self._in_flight = threading.Semaphore(overlap)

    def _one(self) -> None:
        try:
            if self.attempt() and self.ready_after is None:
                self.ready_after = time.monotonic() - self.t0
                self.stop.set()
        finally:
            self._in_flight.release()

    def run(self) -> None:
        while not self.stop.is_set():
            if not self._in_flight.acquire(timeout=self.interval):
                continue
            if self.stop.is_set():
                break
            self.attempts += 1
            if self.overlap == 1:
                self._one()
            else:
                threading.Thread(target=self._one, daemon=True).start()
            self.stop.wait(self.interval)
        # let attempts still in flight finish before the VM goes away
        for _ in range(self.overlap):
            self._in_flight.acquire(timeout=15.0)


def ours(ctx: Context, base: BaseDisk, cfg: Config) -> Row:
    row = Row(BENCH, "imagebuilder (build_vm + first command)")
    from imagebuilder import provision
    from imagebuilder.progress import Progress
    from imagebuilder.ssh import BuildLog

    def once(i: int) -> Sample:
        work = ctx.dir("runs", "boot-ours")
        log = BuildLog(work / "build.log")
        progress = Progress()
        done: list[float] = []

        def step() -> None:
            try:
                with provision.build_vm(base, cfg, work, progress, log) as s:
                    done.append(time.monotonic())
                    result = s.guest.run("true", sudo=False, quiet=True)
                    if result.status != 0:
                        raise OSError(f"'true' exited {result.status} in the guest")
                    done.append(time.monotonic())
                    s.machine.quit()
            finally:
                log.close()

        start = time.monotonic()
        sample = measure(step)
        sample.wall = done[1] - start
        waited = progress.timings.get("boot", 0.0)
        sample.extra.update({f"stage:{k}": v for k, v in progress.timings.items()})
        sample.extra["before_qemu"] = done[0] - start - waited
        sample.extra["first_command"] = done[1] - done[0]
        return sample

    run_row(row, once, ctx)
    if row.ok:
        s = row.samples[0]
        row.note = (
            f"run 1: {s.extra['before_qemu']:.1f} s to start qemu, "
            f"{s.extra.get('stage:boot', 0.0):.1f} s wait_ready, "
            f"{s.extra['first_command']:.2f} s first command"
        )
    return row


def bare(ctx: Context, base: BaseDisk, cfg: Config) -> tuple[Row, Row]:
    """The floor and packer's strategy, measured on the same bare boot."""
    floor = Row(BENCH, f"bare qemu, polled every {FLOOR_INTERVAL} s (floor)")
    packer = Row(BENCH, f"bare qemu, packer's polling ({PACKER_INTERVAL:.0f} s)")
    from imagebuilder import qemu, run
    from imagebuilder.keys import BuildKeys
    from imagebuilder.progress import Progress
    from imagebuilder.provision import BUILD_USER, make_overlay
    from imagebuilder.seed import write_seed
    from imagebuilder.ssh import BuildLog

    def once(i: int) -> Sample:
        work = ctx.dir("runs", "boot-bare")
        keys = BuildKeys.generate(uuid.uuid4().hex[:12])
        log = BuildLog(work / "build.log")
        make_overlay(base, work / "disk.qcow2", cfg.machine.disk_size, log)
        log.close()
        seed = write_seed(work / "seed.iso", keys, user=BUILD_USER, instance_id=f"bench-{i}")
        accel = qemu.probe_accel(cfg.arch, Progress(), requested=cfg.machine.accel,
                                 cache_dir=cfg.source.cache_dir)  # fmt: skip
        code, vars_ = qemu.prepare_firmware(cfg.arch, cfg.machine.firmware, work)
        spec = qemu.MachineSpec(
            arch=cfg.arch, accel=accel, disk=work / "disk.qcow2", serial_log=work / "serial.log",
            qmp_socket=work / "qmp.sock", ssh_port=qemu.free_port(), memory=cfg.machine.memory,
            cpus=cfg.machine.cpus, firmware=cfg.machine.firmware, firmware_code=code,
            firmware_vars=vars_, seed=seed,
        )  # fmt: skip
        pollers: list[Poller] = []

        def attempt() -> bool:
            return try_login(spec.ssh_port, BUILD_USER, keys)

        def step() -> None:
            with run.spawn(qemu.qemu_argv(spec), grace=2.0) as proc:
                t0 = time.monotonic()
                pollers[:] = [Poller(attempt, FLOOR_INTERVAL, t0, overlap=FLOOR_OVERLAP),
                              Poller(attempt, PACKER_INTERVAL, t0)]  # fmt: skip
                for p in pollers:
                    p.start()
                deadline = t0 + qemu.boot_timeout(accel, cfg.machine.timeout)
                while any(p.is_alive() for p in pollers):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        for p in pollers:
                            p.stop.set()
                        raise OSError(f"the bare guest never answered SSH (see {spec.serial_log})")
                    time.sleep(0.2)

        logging.getLogger("paramiko").setLevel(logging.CRITICAL)
        sample = measure(step)
        f, p = (x.ready_after or float("nan") for x in pollers)
        packer.samples.append(Sample(wall=p, extra={"attempts": float(pollers[1].attempts)}))
        return Sample(
            wall=f, peak_rss=sample.peak_rss, extra={"attempts": float(pollers[0].attempts)}
        )

    run_row(floor, once, ctx)
    if not floor.ok:
        packer.status = floor.status
    for row in (floor, packer):
        if row.ok:
            row.note = f"login attempts: {row.samples[0].extra['attempts']:.0f} in run 1"
    return floor, packer


def bench_boot(ctx: Context) -> tuple[list[Row], list[Ratio]]:
    why = missing("imagebuilder.provision", "build_vm", "make_overlay", "BUILD_USER")
    why = why or missing("imagebuilder.ssh", "Guest", "BuildLog")
    why = why or missing("imagebuilder.seed", "write_seed")
    if why:
        return [Row(BENCH, "imagebuilder", status=f"skipped: {why}")], []
    from imagebuilder.progress import Progress

    try:
        base = disks.bench_base(Progress())
    except ImageBuilderError as exc:
        return [Row(BENCH, "imagebuilder", status=f"skipped: no bootstrap base: {exc.message}")], []
    cfg = disks.bench_config(base.path.parents[2], timeout=BOOT_TIMEOUT)
    mine = ours(ctx, base, cfg)
    floor, packer = bare(ctx, base, cfg)
    over = mine.median("wall") - floor.median("wall")
    p_over = packer.median("wall") - floor.median("wall")
    out = [
        Ratio(BENCH, "imagebuilder overhead over the floor", over, unit=" s"),
        Ratio(
            BENCH,
            "imagebuilder overhead over the floor (%)",
            100 * ratio(over, floor.median("wall")),
            unit=" %",
        ),
        Ratio(BENCH, "packer's polling overhead over the floor", p_over, unit=" s"),
        Ratio(
            BENCH,
            "imagebuilder speed-up vs packer's polling",
            ratio(packer.median("wall"), mine.median("wall")),
        ),
    ]
    return [mine, floor, packer], out


__all__ = ["accelerator", "bench_boot", "try_login"]
