"""The dpkg families' bootstrap: mmdebstrap fills an empty root from the package mirror.

The package set a bootstrap base carries (what a cloud image has that cloud-init,
MAAS's deploy checks and the build VM rely on, both firmwares' grub, the kernel),
the sources lines, mmdebstrap's command line, where apt keeps its indexes (their
``Date:`` is the base's epoch) and its downloads (kept in RAM), and the commands
that finish the system inside the chroot (initramfs, locale). Pure knowledge: the
base wing runs all of it.
"""

from __future__ import annotations

import contextlib
import email.utils
from collections.abc import Mapping, Sequence

from ..errors import BootstrapError
from .seam import BootstrapJob, BootstrapTool, Family, Release

#: What every bootstrap base carries on top of the ``minbase`` variant: what a cloud
#: image has that cloud-init, MAAS's deploy checks and the build VM rely on.
COMMON_PACKAGES = (
    "ca-certificates", "cloud-guest-utils", "cloud-init", "curl", "dbus", "dosfstools",
    "e2fsprogs", "fdisk", "initramfs-tools", "iproute2", "iputils-ping", "kmod", "less",
    "libpam-systemd", "locales", "lsb-release", "netbase", "netplan.io", "openssh-server",
    "openssh-sftp-server", "procps", "sudo", "systemd-sysv", "systemd-timesyncd", "tzdata",
    "udev",
)  # fmt: skip

#: Boot loader packages, so curtin finds them installed (no archive access needed for
#: UEFI deploys) and the base boots under both SeaBIOS and UEFI.
GRUB_PACKAGES = {
    "amd64": ("efibootmgr", "grub-efi-amd64", "grub-efi-amd64-signed", "grub-pc-bin",
              "shim-signed"),
    "arm64": ("efibootmgr", "grub-efi-arm64", "grub-efi-arm64-signed", "shim-signed"),
}  # fmt: skip

#: apt's downloads and package lists: in RAM while mmdebstrap runs, never on the disk.
SCRATCH = ("var/cache/apt/archives", "var/lib/apt/lists")
LISTS = "var/lib/apt/lists"


def package_set(rel: Release, arch: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The sorted package list mmdebstrap installs on top of ``minbase``."""
    if arch not in GRUB_PACKAGES:
        raise BootstrapError(
            f"cannot bootstrap {arch}", hint=f"use one of: {', '.join(GRUB_PACKAGES)}"
        )
    pkgs = {*COMMON_PACKAGES, *GRUB_PACKAGES[arch], rel.kernel_package(arch), *extra}
    if rel.family.separate_resolved(rel):
        pkgs.add("systemd-resolved")
    return tuple(sorted(pkgs))


def sources(family: Family, mirror: str, suite: str, components: tuple[str, ...]) -> list[str]:
    """sources.list lines: the release, its updates and its security pocket."""
    lines = [
        family.packages.archive_source(mirror, s, components) for s in (suite, f"{suite}-updates")
    ]
    security = family.security_mirror(mirror)
    if security is not None:
        lines.append(family.packages.archive_source(security, f"{suite}-security", components))
    return lines


def argv(job: BootstrapJob) -> list[str]:
    """The mmdebstrap command line that fills ``job.target`` (a mounted, nearly empty fs)."""
    return [
        "mmdebstrap",
        "--mode=root",
        "--format=directory",
        "--variant=minbase",
        f"--arch={job.arch}",
        f"--keyring={job.keyring}",
        f"--include={','.join(job.packages)}",
        "--verbose",  # apt and dpkg output in the log, for failures
        "--skip=check/empty",  # lost+found and our pre-seeded /etc files
        "--skip=cleanup/apt/lists",  # read for the Release date (then gone with their tmpfs)
        '--aptopt=Acquire::Retries "3"',
        job.suite,
        str(job.target),
        *job.sources,
    ]


def release_urls(lines: Sequence[str]) -> list[str]:
    """The signed InRelease file of each sources line."""
    out = []
    for line in lines:
        _, url, suite = line.split()[:3]
        out.append(f"{url}/dists/{suite}/InRelease")
    return out


def release_date(text: str) -> int | None:
    """The ``Date:`` of a Release file's text, as epoch seconds."""
    for line in text.splitlines():
        if line.startswith("Date:"):
            with contextlib.suppress(TypeError, ValueError):
                return int(email.utils.parsedate_to_datetime(line[5:].strip()).timestamp())
            return None
    return None


def _relay(line: str) -> str | None:
    """mmdebstrap's "I:" and "W:" lines are worth showing as progress."""
    return f"mmdebstrap: {line[3:]}" if line.startswith(("I: ", "W: ")) else None


def locale_steps(name: str, *, takes_name: bool) -> tuple[Mapping[str, str], list[str]]:
    """Files to write and the chroot command that generate locale ``name``."""
    if takes_name:
        return {}, ["locale-gen", name]
    return {"etc/locale.gen": f"{name} UTF-8\n"}, ["locale-gen"]


def tool(*, locale_gen_takes_name: bool) -> BootstrapTool:
    """mmdebstrap as a family's bootstrap tool."""
    return BootstrapTool(
        name="mmdebstrap",
        packages=package_set,
        sources=sources,
        argv=argv,
        release_urls=release_urls,
        release_date=release_date,
        index_dir=LISTS,
        scratch=SCRATCH,
        # An emulated root gets no initramfs from the package scripts (under qemu-user
        # one takes ~10 minutes and dpkg would make two): the one needed is made after.
        emulated_env={"INITRD": "No"},
        # mmdebstrap refuses a foreign --arch without it ("install arch-test").
        foreign_arch_tools={"arch-test": "arch-test"},
        relay=_relay,
        initramfs=lambda version: ["update-initramfs", "-c", "-k", version],
        locale=lambda name: locale_steps(name, takes_name=locale_gen_takes_name),
    )
