"""Benchmark 2: qemu start to the first SSH command, against the floor and packer's polling.

All three are timed on the same boot of the bench base, from the moment qemu starts,
because boot-to-boot variance under TCG (several seconds) is larger than what is
being measured:

- imagebuilder: ``provision.build_vm`` (its ``Guest.wait_ready``), then the first
  command (``true``) over SSH. Its preparation before qemu starts (overlay, seed ISO,
  keys, accelerator choice, firmware) is reported beside it.
- the floor: a login + ``true`` started every 0.1 s (up to four in flight, so one
  stuck waiting for a banner delays nothing), from qemu start.
- packer's strategy: a login at once, then 5 s after every failure (packer's SSH
  communicator).

The pollers learn the port and the per-build keys by wrapping ``BuildKeys.generate``
and ``qemu_cmdline.free_port`` while ``build_vm`` runs (see :class:`Observer`). Each login
pins the guest's host key. This module does not print.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from imagebuilder.config.tree import Config
from imagebuilder.errors import ImageBuilderError
from imagebuilder.sources.basedisk import BaseDisk

from . import disks
from .common import missing
from .harness import Context, Ratio, Row, Sample, ratio, run_row

if TYPE_CHECKING:
    from imagebuilder.vm.keys import BuildKeys

BENCH = "boot"
FLOOR_INTERVAL = 0.1
PACKER_INTERVAL = 5.0
FLOOR_OVERLAP = 4  # floor attempts in flight at once
#: Seconds a boot may take before the run counts as failed (a TCG boot takes ~1 min).
BOOT_TIMEOUT = 420


def accelerator() -> str:
    """What the build VM uses here: "kvm", or "tcg (why KVM is not usable)"."""
    from imagebuilder.config.tree import Accel
    from imagebuilder.progress import Event, Progress
    from imagebuilder.vm.accel import probe_accel

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


class Observer:
    """Learns the build VM's SSH port and client key as ``build_vm`` makes them.

    While active, ``provision.BuildKeys.generate`` and ``qemu_cmdline.free_port`` are wrapped
    (nothing is edited; the originals are restored on exit): the keys are kept, and
    the moment the port is chosen (just before qemu starts) starts the pollers.
    """

    def __init__(self, on_port: Callable[[float], None]) -> None:
        self.keys: BuildKeys | None = None
        self.port = 0
        self.t0 = 0.0
        self.on_port = on_port
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Observer:
        from unittest import mock

        from imagebuilder.vm import provision, qemu_cmdline

        real_keys, real_port = vars(provision)["BuildKeys"], qemu_cmdline.free_port
        observer = self

        class Keys(real_keys):  # type: ignore[valid-type,misc]
            @classmethod
            def generate(cls, build_id: str) -> BuildKeys:
                observer.keys = real_keys.generate(build_id)
                return observer.keys

        def free_port() -> int:
            first = observer.port == 0
            observer.port = real_port()
            if first:
                observer.t0 = time.monotonic()
                observer.on_port(observer.t0)
            return observer.port

        self._stack.enter_context(mock.patch.object(provision, "BuildKeys", Keys))
        self._stack.enter_context(mock.patch.object(qemu_cmdline, "free_port", free_port))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def one_boot(base: BaseDisk, cfg: Config, work: Path) -> dict[str, float]:
    """One boot of the build VM, with the floor and packer pollers on the same guest.

    Returns seconds from qemu start: ``ours`` (build_vm logged in and ran ``true``),
    ``floor`` and ``packer`` (their first login that ran ``true``), plus ``prep`` (from
    entering build_vm to qemu start), ``wait_ready`` and the poller attempt counts.
    """
    from imagebuilder.progress import Progress
    from imagebuilder.vm import provision
    from imagebuilder.vm.ssh import BuildLog

    pollers: list[Poller] = []
    holder: list[Observer] = []

    def attempt() -> bool:
        obs = holder[0]
        assert obs.keys is not None
        return try_login(obs.port, provision.BUILD_USER, obs.keys)

    def start_pollers(t0: float) -> None:
        pollers[:] = [Poller(attempt, FLOOR_INTERVAL, t0, overlap=FLOOR_OVERLAP),
                      Poller(attempt, PACKER_INTERVAL, t0)]  # fmt: skip
        for p in pollers:
            p.start()

    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    log = BuildLog(work / "build.log")
    progress = Progress()
    start = time.monotonic()
    try:
        with Observer(start_pollers) as obs:
            holder.append(obs)
            with provision.build_vm(base, cfg, work, progress, log) as s:
                result = s.guest.run("true", sudo=False, quiet=True)
                done = time.monotonic()
                if result.status != 0:
                    raise OSError(f"'true' exited {result.status} in the build VM")
                if not pollers:
                    raise OSError("could not observe the build VM's port and keys")
                deadline = time.monotonic() + s.timeout
                while any(p.is_alive() for p in pollers) and time.monotonic() < deadline:
                    s.machine.check()
                    time.sleep(0.2)
                s.machine.quit()
    finally:
        for p in pollers:
            p.stop.set()
        log.close()
    floor, packer = pollers
    nan = float("nan")
    return {
        "ours": done - obs.t0,
        "floor": floor.ready_after if floor.ready_after is not None else nan,
        "packer": packer.ready_after if packer.ready_after is not None else nan,
        "prep": obs.t0 - start,
        "wait_ready": progress.timings.get("boot", nan),
        "floor_attempts": float(floor.attempts),
        "packer_attempts": float(packer.attempts),
    }


def bench_boot(ctx: Context) -> tuple[list[Row], list[Ratio]]:
    why = missing("imagebuilder.vm.provision", "build_vm", "BuildKeys", "BUILD_USER")
    why = why or missing("imagebuilder.vm.qemu_cmdline", "free_port")
    why = why or missing("imagebuilder.vm.ssh", "Guest", "BuildLog")
    if why:
        return [Row(BENCH, "imagebuilder", status=f"skipped: {why}")], []
    from imagebuilder.progress import Progress

    try:
        base = disks.bench_base(Progress())
    except ImageBuilderError as exc:
        return [Row(BENCH, "imagebuilder", status=f"skipped: no bootstrap base: {exc.message}")], []
    cfg = disks.bench_config(base.path.parents[2], timeout=BOOT_TIMEOUT)
    mine = Row(BENCH, "imagebuilder: build_vm, then the first command")
    floor = Row(BENCH, f"same boot, login polled every {FLOOR_INTERVAL} s (floor)")
    packer = Row(
        BENCH, f"same boot, packer's polling (at once, then every {PACKER_INTERVAL:.0f} s)"
    )

    def once(i: int) -> Sample:
        t = one_boot(base, cfg, ctx.dir("runs", "boot"))
        floor.samples.append(Sample(wall=t["floor"], extra={"attempts": t["floor_attempts"]}))
        packer.samples.append(Sample(wall=t["packer"], extra={"attempts": t["packer_attempts"]}))
        return Sample(wall=t["ours"], extra={"prep": t["prep"], "wait_ready": t["wait_ready"]})

    run_row(mine, once, ctx)
    if not mine.ok:
        floor.status = packer.status = mine.status
        floor.samples.clear()
        packer.samples.clear()
    else:
        prep = mine.median("prep")
        mine.note = f"timed from qemu start; {prep:.2f} s before it (overlay, seed, keys)"
        for row in (floor, packer):
            row.note = f"login attempts: {row.samples[0].extra['attempts']:.0f} in run 1"
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
            "packer's polling overhead over the floor (%)",
            100 * ratio(p_over, floor.median("wall")),
            unit=" %",
        ),
    ]
    return [mine, floor, packer], out


__all__ = ["accelerator", "bench_boot", "try_login"]
