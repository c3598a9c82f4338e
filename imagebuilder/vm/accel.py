"""Choose the accelerator of the build VM by running a guest, not by looking at /dev/kvm.

On some hosts ``/dev/kvm`` exists and qemu starts, yet guests hang as soon as they
take an exception in long mode (nested virtualisation without working exception
delivery): a Linux kernel stops in its decompressor with no output. So ``auto``
boots a 512-byte x86 guest (:data:`PAYLOAD_SOURCE`) with exactly the accelerator
and CPU the build would use. It walks real mode -> protected mode -> long mode ->
4 KiB page writes -> 1000 breakpoint exceptions -> 480 page faults mapped on
demand, printing a checkpoint letter per stage on COM1, and exits qemu through
``isa-debug-exit`` with status 85. KVM is used only if that happens within
:data:`PROBE_DEADLINE` seconds; otherwise TCG, with one warning naming the stage
KVM stopped at. Results are cached for the process, and per host boot in the
cache directory. This module never starts the build VM itself.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import run
from ..config.tree import Accel
from ..errors import MachineError
from ..families.catalogue import QEMU_ARCH
from ..progress import Progress

#: Seconds the probe guest gets. A working KVM finishes in well under a second.
PROBE_DEADLINE = 10.0
#: qemu's exit status when the payload writes 0x2a to isa-debug-exit: (0x2a << 1) | 1.
PROBE_SUCCESS = 85
CHECKPOINTS = {
    "": "before the guest ran any code",
    "R": "in real mode",
    "P": "in protected mode",
    "L": "after entering long mode",
    "T": "taking a breakpoint exception in long mode",
    "B": "handling page faults",
    "M": "exiting",
}
#: CPU model used with each accelerator (qemu_argv uses the same, see :func:`cpu_model`).
CPU = {"kvm": "host", "tcg": "max"}


def cpu_model(arch: str, accel: str) -> str:
    """The ``-cpu`` of an ``arch`` guest under ``accel``.

    Emulated arm64 gets ``max`` with the implementation-defined pointer
    authentication algorithm: the architected one (QARMA) costs TCG several
    times more on every function return of the guest, for nothing a build needs.
    """
    if arch == "arm64" and accel == "tcg":
        return "max,pauth-impdef=on"
    return CPU[accel]


#: GNU as source of the payload (``as --32``; ``ld -m elf_i386 -Ttext=0x7c00
#: --oformat=binary``); tests/test_qemu.py reassembles it and compares with PAYLOAD.
PAYLOAD_SOURCE = r"""
.macro PUTC c
  movw $0x3fd,%dx
91:
  inb %dx,%al
  testb $0x20,%al
  jz 91b
  movw $0x3f8,%dx
  movb $\c,%al
  outb %al,%dx
.endm
.code16
.globl _start
_start:
  cli
  xorw %ax,%ax
  movw %ax,%ds
  movw %ax,%es
  movw %ax,%ss
  movw $0x7c00,%sp
  PUTC 'R'
  lgdtl gdtr
  movl %cr0,%eax
  orb $1,%al
  movl %eax,%cr0
  ljmpl $0x08,$pm32
.code32
pm32:
  movw $0x10,%ax
  movw %ax,%ds
  movw %ax,%es
  movw %ax,%ss
  PUTC 'P'
  movl $0x1000,%edi          # zero 0x1000-0x5fff: PML4, PDPT, PD, IDT at 0x5000
  xorl %eax,%eax
  movl $0x1400,%ecx
  rep stosl
  movl $0x2003,0x1000
  movl $0x3003,0x2000
  movl $0x83,0x3000          # 0-2 MiB: one 2 MiB page
  movl %cr4,%eax
  orl $0x20,%eax             # PAE
  movl %eax,%cr4
  movl $0x1000,%eax
  movl %eax,%cr3
  movl $0xc0000080,%ecx      # EFER.LME
  rdmsr
  orl $0x100,%eax
  wrmsr
  movl %cr0,%eax
  orl $0x80000000,%eax       # paging on: long mode
  movl %eax,%cr0
  ljmpl $0x18,$lm64
.code64
lm64:
  movl $0x7c00,%esp
  movl $h_bp,%eax            # IDT: vector 3 (#BP) and 14 (#PF)
  orl $0x180000,%eax
  movl %eax,0x5030
  movl $0x8e00,0x5034
  movl $h_pf,%eax
  orl $0x180000,%eax
  movl %eax,0x50e0
  movl $0x8e00,0x50e4
  lidt idtr(%rip)
  PUTC 'L'
  movl $0x3000,%edi          # map 0-64 MiB with 2 MiB pages
  movl $0x83,%eax
  movl $32,%ecx
2:
  movq %rax,(%rdi)
  addq $0x200000,%rax
  addq $8,%rdi
  loop 2b
  movq %cr3,%rax
  movq %rax,%cr3
  movl $0x400000,%edi        # write every 4 KiB page of 4-64 MiB
3:
  movq %rdi,(%rdi)
  addq $0x1000,%rdi
  cmpq $0x4000000,%rdi
  jb 3b
  PUTC 'T'
  movl $1000,%ecx
4:
  int3
  loop 4b
  PUTC 'B'
  movl $0x4000000,%edi       # 64 MiB-1 GiB in 2 MiB steps: each write page-faults
5:
  movq %rdi,(%rdi)
  addq $0x200000,%rdi
  cmpq $0x40000000,%rdi
  jb 5b
  PUTC 'M'
  movb $0x2a,%al
  outb %al,$0xf4             # isa-debug-exit: qemu exits with status 85
1:
  hlt
  jmp 1b
h_bp:
  iretq
h_pf:                        # map the faulting 2 MiB page, drop the error code
  pushq %rax
  movq %cr2,%rax
  shrq $21,%rax
  shlq $21,%rax
  orq $0x83,%rax
  pushq %rax
  movq %cr2,%rax
  shrq $21,%rax
  popq 0x3000(,%rax,8)
  popq %rax
  addq $8,%rsp
  iretq
.p2align 3
gdt:
  .quad 0
  .quad 0x00cf9a000000ffff   # 0x08 code32
  .quad 0x00cf92000000ffff   # 0x10 data
  .quad 0x00af9a000000ffff   # 0x18 code64
gdtr:
  .word gdtr-gdt-1
  .long gdt
idtr:
  .word 15*16-1
  .long 0x5000, 0
"""

PAYLOAD = bytes.fromhex(
    "fa31c08ed88ec08ed0bc007cbafd03eca82074fbbaf803b052ee660f0116d87d0f20c00c010f22c066ea307c00000800"
    "66b810008ed88ec08ed066bafd03eca82074fb66baf803b050eebf0010000031c0b900140000f3abc705001000000320"
    "0000c7050020000003300000c70500300000830000000f20e083c8200f22e0b8001000000f22d8b9800000c00f320d00"
    "0100000f300f20c00d000000800f22c0eaa77c00001800bc007c0000b88e7d00000d0000180089042530500000c70425"
    "34500000008e0000b8907d00000d00001800890425e0500000c70425e4500000008e00000f011df300000066bafd03ec"
    "a82074fb66baf803b04ceebf00300000b883000000b9200000004889074805000020004883c708e2f10f20d80f22d8bf"
    "0000400048893f4881c7001000004881ff0000000472ed66bafd03eca82074fb66baf803b054eeb9e8030000cce2fd66"
    "bafd03eca82074fb66baf803b042eebf0000000448893f4881c7000020004881ff0000004072ed66bafd03eca82074fb"
    "66baf803b04deeb02ae6f4f4ebfd48cf500f20d048c1e81548c1e015480d83000000500f20d048c1e8158f04c5003000"
    "00584883c40848cf0000000000000000ffff0000009acf00ffff00000092cf00ffff0000009aaf001f00b87d0000ef00"
    "0050000000000000"
)


def boot_sector() -> bytes:
    """The payload as an MBR boot sector (512 bytes, 0x55AA signature)."""
    return PAYLOAD.ljust(510, b"\0") + b"\x55\xaa"


@dataclass(frozen=True)
class ProbeResult:
    accel: str  # "kvm" | "tcg"
    reason: str = ""  # why KVM was not chosen ("" when it was, or was never possible)
    seconds: float = 0.0


_RESULTS: dict[str, ProbeResult] = {}


def host_matches(arch: str) -> bool:
    return QEMU_ARCH.get(arch) == platform.machine()


def kvm_unusable(arch: str) -> str | None:
    """Why KVM cannot even be tried for ``arch`` guests here, or None."""
    if not host_matches(arch):
        return f"{arch} guests on a {platform.machine()} host need emulation"
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "no permission to use /dev/kvm (join the kvm group)"
    return None


def run_probe(
    accel: str,
    *,
    deadline: float = PROBE_DEADLINE,
    cpu: str | None = None,
    extra: Sequence[str] = (),
) -> ProbeResult:
    """Boot the payload with ``accel`` (and ``cpu``, default :data:`CPU`).

    The result names ``accel`` if qemu exits with 85 within ``deadline``, else tcg
    and the reason.
    """
    qemu = run.which("qemu-system-x86_64")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="imagebuilder-probe-") as tmp:
        disk, serial = Path(tmp) / "probe.img", Path(tmp) / "serial.txt"
        with open(disk, "wb") as fh:
            fh.write(boot_sector())
            fh.truncate(1 << 20)  # SeaBIOS will not boot a one-sector disk
        argv = [
            qemu, "-accel", accel, "-cpu", cpu or CPU[accel], "-machine", "q35", "-m", "32",
            "-nodefaults", "-display", "none", "-no-reboot", "-serial", f"file:{serial}",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-drive", f"format=raw,file={disk},if=ide,snapshot=on", *extra,
        ]  # fmt: skip
        with run.spawn(argv, stderr=subprocess.PIPE, grace=1.0) as proc:
            try:
                _, err = proc.communicate(timeout=deadline)
                code: int | None = proc.returncode
            except subprocess.TimeoutExpired:
                code, err = None, b""
        seconds = time.monotonic() - start
        reached = serial.read_text(errors="replace")[-1:] if serial.exists() else ""
    if code == PROBE_SUCCESS:
        return ProbeResult(accel, "", seconds)
    where = CHECKPOINTS.get(reached, "at an unknown point")
    if code is None:
        why = f"a test guest hung {where} (no exit after {deadline:.0f} s)"
    else:
        lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()] or lines[-1:]
        status = f"died of {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
        why = f"qemu {status} {where}" + (f" ({errors[0].strip()})" if errors else "")
    return ProbeResult("tcg", why, seconds)


def _stamp() -> dict[str, str]:
    """What makes a cached probe result valid: same host boot, same qemu binary."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = ""
    qemu = run.which("qemu-system-x86_64")
    st = os.stat(qemu)
    return {"boot_id": boot_id, "qemu": f"{qemu}:{st.st_size}:{int(st.st_mtime)}"}


def _load(cache_dir: Path | None, arch: str) -> ProbeResult | None:
    if cache_dir is None:
        return None
    try:
        data = json.loads((cache_dir / "accel-probe.json").read_text())
        if data.get("stamp") != _stamp() or not data["stamp"]["boot_id"]:
            return None
        entry = data["results"][arch]
        return ProbeResult(str(entry["accel"]), str(entry["reason"]), 0.0)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save(cache_dir: Path | None, arch: str, result: ProbeResult) -> None:
    if cache_dir is None:
        return
    path = cache_dir / "accel-probe.json"
    data = {"stamp": _stamp(), "results": {arch: {"accel": result.accel, "reason": result.reason}}}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        pass  # a cache, nothing more


def forget() -> None:
    """Drop the per-process results (tests)."""
    _RESULTS.clear()


def probe_accel(
    arch: str,
    progress: Progress,
    *,
    requested: Accel,
    cache_dir: Path | None = None,
    deadline: float = PROBE_DEADLINE,
) -> str:
    """The accelerator to use for ``arch`` guests: "kvm" or "tcg".

    ``tcg`` is taken as asked. ``kvm`` is checked for being possible, not probed
    (the user insists). ``auto`` runs the probe once per process (and per host boot
    when ``cache_dir`` is given) and warns once when it falls back to TCG.
    """
    if requested is Accel.TCG:
        return "tcg"
    problem = kvm_unusable(arch)
    if requested is Accel.KVM:
        if problem:
            raise MachineError(
                f"--accel kvm is not possible: {problem}", hint="use --accel auto or --accel tcg"
            )
        return "kvm"
    if problem and not host_matches(arch):
        # A foreign guest (arm64 on an x86 host) can only be emulated: always TCG,
        # no KVM probe (the probe payload is x86 code anyway), nothing to warn about.
        return "tcg"
    result = _RESULTS.get(arch)
    if result is None:
        if problem:
            result = ProbeResult("tcg", problem)
        elif arch != "amd64":
            result = ProbeResult("tcg", f"no functional KVM probe for {arch} guests yet")
        else:
            result = _load(cache_dir, arch)
            if result is None:
                with progress.stage("accel-probe", "does KVM really run a guest?"):
                    result = run_probe("kvm", deadline=deadline)
                _save(cache_dir, arch, result)
        _RESULTS[arch] = result
    if result.accel == "tcg":
        progress.warning(
            f"KVM is not usable: {result.reason}; falling back to TCG (much slower)",
            once="kvm-fallback",
        )
    return result.accel
