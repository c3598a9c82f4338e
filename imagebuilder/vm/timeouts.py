"""How long the build VM may take: to reach SSH and finish cloud-init, and to power off.

Per accelerator (TCG is far slower than KVM), scaled for guests that TCG emulates
more slowly still (arm64 on an x86 host); ``--timeout`` overrides the boot budget.
Numbers only: nothing here starts, waits for or stops a VM.
"""

from __future__ import annotations

#: Seconds to reach SSH (and to finish cloud-init), and to power off, per accelerator.
BOOT_TIMEOUT = {"kvm": 300.0, "tcg": 900.0}
POWEROFF_TIMEOUT = {"kvm": 60.0, "tcg": 180.0}
#: How much slower than an x86 guest under TCG a guest of this arch is on an x86 host
#: (measured here: the bookworm build VM stages and export took 200-330 s for arm64 and
#: ~150 s for amd64, 1.3-2.1x; the timeouts themselves are several times a normal boot).
TCG_SLOWDOWN = {"arm64": 2.0}


def _scale(accel: str, arch: str) -> float:
    return TCG_SLOWDOWN.get(arch, 1.0) if accel == "tcg" else 1.0


def boot_timeout(accel: str, override: float | None = None, *, arch: str = "amd64") -> float:
    """Seconds to wait for SSH and cloud-init: ``override`` (--timeout) or the default."""
    if override is not None:
        return override
    return BOOT_TIMEOUT[accel] * _scale(accel, arch)


def poweroff_timeout(accel: str, *, arch: str = "amd64") -> float:
    """Seconds the guest gets to power itself off."""
    return POWEROFF_TIMEOUT[accel] * _scale(accel, arch)
