"""Whether libguestfs' appliance must run under TCG during an export: when KVM does not run guests.

Both export paths start the appliance when no loop mount, FUSE or debugfs can do
the job. The appliance is a small VM, so it gets the accelerator the build VM
would: what ``--accel`` asks for, as :func:`imagebuilder.vm.accel.probe_accel`
finds it on this host.

This module only asks; the probe belongs to :mod:`imagebuilder.vm.accel`, and
this module starts no appliance itself.
"""

from __future__ import annotations

import platform

from ..config.tree import Config
from ..progress import Progress


def force_tcg(cfg: Config, progress: Progress) -> bool:
    """Whether libguestfs' appliance must run under TCG: when KVM does not run guests."""
    from ..vm import accel

    host = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    requested = cfg.machine.accel
    found = accel.probe_accel(host, progress, requested=requested, cache_dir=cfg.source.cache_dir)
    return found != "kvm"
