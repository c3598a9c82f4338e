"""The OS-family seam: what one family module fills in so every stage can build it.

A :class:`Family` is data and small pure functions: where its cloud images and
archives live, the package manager's commands inside the guest, its kernel policy,
the EFI directory of its bootloader, what curtin installs on it when missing, the
``base_image`` MAAS needs for it, its installer. A :class:`Release` is one series of
a family. The stages (vm, base, installer, export, maas) ask ``release.family``;
none of them branches on a distribution's name.

Must not import anything above the ground, run a program, or touch a disk or the
network: it is the shape of the knowledge, not the work.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


@dataclass(frozen=True)
class Resolution:
    """What a mirror would install: name -> version, and its Release dates."""

    packages: dict[str, str]
    release_dates: dict[str, int]  # suite -> Date: of its (In)Release file, epoch seconds


#: Package name -> (version, architecture) lists, as the manifest and inspect read them.
Packages = list[dict[str, str]]


@dataclass(frozen=True)
class PackageSystem:
    """A family's package system: its package manager inside the build VM (shell text
    run as root), the guest scripts and curtin rules that depend on it, and the host's
    tools for its archives (sources lines, fetching and unpacking a package, resolving
    what a bootstrap installs)."""

    name: str  # what the build log calls it ("apt")
    env: Mapping[str, str]  # for every root command: no prompts
    refresh: str  # fetch the indexes
    install: Callable[[str], str]  # shell-quoted package names -> command
    remove_kernels: str  # purge every kernel the image carries
    database: str  # the installed-package database, relative to /
    parse_database: Callable[[bytes], Packages]
    native: str  # a package always installed for the system's own architecture
    proxy_file: str  # where the build's proxy settings go (removed by hygiene)
    proxy_conf: Callable[[Mapping[str, str]], str]
    #: Scripts of ``seeds/`` the build VM runs for this family: both firmwares' boot
    #: loaders in the image, and the hygiene that removes every trace of the build.
    bootloaders_script: str
    hygiene_script: str
    #: What curtin's hooks install at deploy when missing: arch -> firmware -> packages,
    #: the first being the one a carried package file may stand in for.
    curtin_installs: Mapping[str, Mapping[str, tuple[str, ...]]]
    #: (mirror, suite, components) -> the package manager's line for that archive.
    archive_source: Callable[[str, str, tuple[str, ...]], str]
    #: (sources, arch, keyring, package, directory) -> that package's file, downloaded and
    #: verified by the host's package tools; and a package file's contents as a tar stream.
    fetch_package: Callable[[Sequence[str], str, Path, str, Path], Path]
    package_payload: Callable[[Path], AbstractContextManager[IO[bytes]]]
    #: What a bootstrap from the mirror installs, resolved on the host without a VM:
    #: (sources lines, suite, arch, keyring, packages) -> resolution.
    resolve_versions: Callable[[Sequence[str], str, str, Path, Sequence[str]], Resolution]


#: Terminal control sequences in serial console text, as installers print it.
TERMINAL_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class AnswerRequest:
    """What an installer's answer file is rendered from (``layout``: flat | lvm)."""

    suite: str
    mirror: str
    layout: str
    firmware: str  # uefi | bios
    kernel: str
    arch: str
    proxy: str | None = None


@dataclass(frozen=True)
class IsoEntry:
    name: str
    sha256: str


@dataclass(frozen=True)
class Components:
    """What an installer downloads from the package mirror while it installs, so that a
    mirror lacking any of it is refused before a long boot."""

    index_url: Callable[[str, str, str], str]  # (mirror, suite, arch) -> xz index URL
    #: (index text, the initrd's (name, content) members) -> name -> path on the mirror
    needed: Callable[[str, Iterable[tuple[str, bytes]]], dict[str, str]]


@dataclass(frozen=True)
class NetbootPackage:
    """A netboot installer shipped as a package of the release's archive."""

    package: Callable[[str, str], str]  # (series, arch) -> its package name
    members: Callable[[str, str], tuple[str, str]]  # (series, arch) -> kernel, initrd in it


@dataclass(frozen=True)
class InstallerKind:
    """A family's OS installer, as the installer wing runs it with no keystrokes."""

    name: str
    answers: Callable[[AnswerRequest], str]  # the answer file's text
    answer_file: str  # its name: on the loopback HTTP server, or on a cidata seed ISO
    served: bool  # True: fetched over HTTP (its URL is in the command line); False: seed ISO
    cmdline: Callable[[str | None, str], str]  # (answers URL or None, arch) -> kernel cmdline
    iso_members: Mapping[str, tuple[str, str]]  # arch -> (kernel, initrd) inside its ISO
    min_memory: int  # MiB the installer needs at least (0: the build's own)
    fatal: tuple[str, ...]  # serial console lines that mean the install failed
    #: Where its ISO is published ((release, arch, mirror) -> directory) and which file of
    #: that directory's SHA256SUMS is it; None: no download (a local --iso, or netboot).
    iso_dir_url: Callable[[Release, str, str | None], str] | None
    iso_pick: Callable[[str, str], IsoEntry] | None  # (SHA256SUMS text, arch) -> the ISO
    #: Without --iso, boot the netboot installer shipped as a package of the archive.
    netboot: NetbootPackage | None
    components: Components | None  # checked on the mirror before a netboot install
    #: The question its text frontend waits on at the end of the console text, if any.
    pending_question: Callable[[str], str | None]


@dataclass(frozen=True)
class BootstrapJob:
    """One bootstrap run: what to install from where into the mounted root ``target``."""

    suite: str
    arch: str
    keyring: str
    packages: tuple[str, ...]
    sources: tuple[str, ...]
    target: Path


@dataclass(frozen=True)
class BootstrapTool:
    """How a family fills an empty root from its package mirror on the host, with no VM
    (the base wing partitions, mounts, runs this and installs the bootloader)."""

    name: str  # the program, for logs and errors
    #: (release, arch, extra packages) -> the sorted package set of a bootstrap base
    packages: Callable[[Release, str, tuple[str, ...]], tuple[str, ...]]
    #: (family, mirror, suite, components) -> the sources the tool and the lock read
    sources: Callable[[Family, str, str, tuple[str, ...]], list[str]]
    argv: Callable[[BootstrapJob], list[str]]
    release_urls: Callable[[Sequence[str]], list[str]]  # the sources' signed release files
    release_date: Callable[[str], int | None]  # a release file's text -> its date (epoch s)
    index_dir: str  # where the tool leaves the indexes in the root (emptied afterwards)
    scratch: tuple[str, ...]  # directories of the root kept in RAM while it runs
    emulated_env: Mapping[str, str]  # extra environment when the arch is emulated
    foreign_arch_tools: Mapping[str, str]  # host programs (-> packages) it needs then
    relay: Callable[[str], str | None]  # a line of its log -> progress text, if worth it
    initramfs: Callable[[str], list[str]]  # kernel version -> the chroot command making one
    #: locale name -> (files to write, relative to the root; the chroot command)
    locale: Callable[[str], tuple[Mapping[str, str], list[str]]]


@dataclass(frozen=True)
class Family:
    """One OS family: everything the stages must know to build and check its images."""

    name: str  # the os-release ID and the ``distro`` column
    title: str  # for MAAS titles: "Debian"
    packages: PackageSystem
    #: (release, arch, released) -> image file name; (release, mirror, serial, released) -> dir.
    image_filename: Callable[[Release, str, bool], str]
    image_dir_url: Callable[[Release, str | None, str | None, bool], str]
    archive_mirror: Callable[[str], str]  # arch -> default package mirror for a bootstrap
    archive_keyring: str
    keyring_package: str  # the host package that ships ``archive_keyring``
    bootstrap_components: tuple[str, ...]
    #: package mirror -> where its security updates are (None: not known for that mirror).
    security_mirror: Callable[[str], str | None]
    kernel_package: Callable[[str, str | None], str]  # (arch, flavour) -> package
    #: MAAS installs a kernel on it (Ubuntu): cloud images lose theirs, nothing is pinned.
    maas_installs_kernel: bool
    maas_base_image: Callable[[Release], str]
    bootloader_id: str  # the EFI directory grub is installed under
    #: Which release has systemd-resolved as its own package.
    separate_resolved: Callable[[Release], bool]
    installer: InstallerKind | None
    extended_support: str  # how ``releases`` names the security-only years
    lts_in_version: bool  # "22.04 LTS"
    daily_serials: bool  # daily images carry unpacked/build-info.txt with their serial
    bootstrap: BootstrapTool | None  # a base from the package mirror, no VM (--base bootstrap)


@dataclass(frozen=True)
class Release:
    """One series of a family: its names, dates, architectures and image files."""

    family: Family
    codename: str
    version: str
    lts: bool
    released: _dt.date
    eol: _dt.date  # end of standard support
    extended_eol: _dt.date | None = None  # end of security-only support
    arches: tuple[str, ...] = ("amd64", "arm64")
    #: Kernel package names by flavour; the first is the default.
    kernels: tuple[str, ...] = ()
    checksum_file: str = "SHA256SUMS"
    signature_file: str | None = "SHA256SUMS.gpg"
    default_keyring: str | None = None
    extra_notes: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return self.codename

    @property
    def distro(self) -> str:
        return self.family.name

    def status(self, today: _dt.date | None = None) -> str:
        today = today or _dt.date.today()
        if today < self.released:
            return "development"
        if today > self.eol:
            if self.extended_eol and today <= self.extended_eol:
                return self.family.extended_support
            return "end of life"
        return "supported (LTS)" if self.lts and self.family.lts_in_version else "supported"

    def display_version(self) -> str:
        return self.version + (" LTS" if self.lts and self.family.lts_in_version else "")

    def kernel_package(self, arch: str, flavour: str | None = None) -> str:
        """The kernel package MAAS/curtin should install for this release."""
        return self.family.kernel_package(arch, flavour)

    def image_filename(self, arch: str, *, released: bool = False) -> str:
        return self.family.image_filename(self, arch, released)

    def image_dir_url(
        self, mirror: str | None = None, *, serial: str | None = None, released: bool = False
    ) -> str:
        """Directory holding the image and its checksum/signature files (``serial`` pins it)."""
        return self.family.image_dir_url(self, mirror, serial, released)

    def archive_mirror(self, arch: str) -> str:
        """Default package mirror for bootstrapping this release."""
        return self.family.archive_mirror(arch)

    def archive_keyring(self) -> str:
        return self.family.archive_keyring

    def bootstrap_components(self) -> tuple[str, ...]:
        return self.family.bootstrap_components
