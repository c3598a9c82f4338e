"""Check an output file the way a MAAS deploy would find it.

:func:`inspect_image` sniffs what the file is (gzip/xz/bzip2/none; a root tar or
a whole disk, so the MAAS filetype), reads the image inside (a tar is streamed;
a dd image is decompressed into a sparse scratch file and read with debugfs or
libguestfs, never mounted), and reports facts and problems: the curtin hook
present and executable, the kernel present or absent as intended
(``/curtin/CUSTOM_KERNEL`` must name an installed kernel; Debian images need one),
cloud-init and netplan present (MAAS runs both in the target), an empty
machine-id, no ssh host keys, no build user, no ``/etc/fstab`` in cloud-image
tars, and for dd images ``/curtin/``, a kernel and an fstab. A manifest beside
the file is checked against it. :func:`check_image` raises
:class:`~imagebuilder.errors.InspectError` naming each problem.

It reads only; the output and any manifest are never modified.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import lzma
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from ..errors import InspectError
from ..families import catalogue
from ..families.seam import Family, Packages

#: Files whose content the checks read, besides the families' databases (wanted_files).
WANTED = (
    "curtin/CUSTOM_KERNEL",
    "etc/machine-id",
    "etc/passwd",
    "etc/fstab",
    "etc/os-release",
    "usr/lib/os-release",
)


def wanted_files() -> tuple[str, ...]:
    """What the checks read: :data:`WANTED` and the package database of every family the
    catalogue holds now (asked at read time, so a family registered later counts)."""
    return (*WANTED, *sorted({f.packages.database for f in catalogue.FAMILIES}))


BUILD_USER = "imagebuilder-build"
FILETYPES = {
    ("gzip", "tar"): "tgz",
    ("xz", "tar"): "txz",
    ("bzip2", "tar"): "tbz",
    ("none", "tar"): "tar",
    ("gzip", "disk"): "ddgz",
    ("xz", "disk"): "ddxz",
    ("bzip2", "disk"): "ddbz2",
    ("none", "disk"): "ddraw",
}


@dataclass
class InspectReport:
    problems: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    mode: int  # st_mode with type bits
    uid: int
    size: int
    link: str = ""


@dataclass
class Tree:
    """The parts of an image the checks look at: every entry, some file contents."""

    entries: dict[str, Entry] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)

    def listdir(self, path: str) -> list[str]:
        prefix = path.strip("/") + "/"
        return sorted(
            {
                k[len(prefix) :].split("/")[0]
                for k in self.entries
                if k.startswith(prefix) and k != prefix
            }
        )


def compression(head: bytes) -> str:
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:3] == b"BZh":
        return "bzip2"
    return "none"


def open_stream(src: Path | Any, comp: str) -> IO[bytes]:
    """The decompressed bytes of ``src`` (a path or a readable object) as a stream."""
    if comp == "gzip":
        try:
            from isal import igzip

            return cast(IO[bytes], igzip.open(src, "rb"))  # type: ignore[no-untyped-call]
        except ImportError:  # pragma: no cover
            import gzip

            return cast(IO[bytes], gzip.open(src, "rb"))
    if comp == "xz":
        return cast(IO[bytes], lzma.open(src, "rb"))
    if comp == "bzip2":
        import bz2

        return cast(IO[bytes], bz2.open(src, "rb"))
    return cast(IO[bytes], src) if not isinstance(src, Path) else open(src, "rb")


class _Hashing(io.RawIOBase):
    """Read-through wrapper that hashes the compressed file as it is read."""

    def __init__(self, f: io.BufferedIOBase) -> None:
        super().__init__()
        self.f, self.sha = f, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n: int = self.f.readinto(b)
        self.sha.update(memoryview(b)[:n])
        return n


def _rel(name: str) -> str:
    return "" if name in (".", "./") else name.removeprefix("./").strip("/")


def read_tar(stream: IO[bytes]) -> tuple[Tree, int]:
    """Index a tar stream: entries, the wanted files' contents, and its uncompressed size."""
    tree = Tree()
    wanted = frozenset(wanted_files())
    with tarfile.open(fileobj=stream, mode="r|") as tf:
        for m in tf:
            rel = _rel(m.name)
            kind = stat.S_IFDIR if m.isdir() else stat.S_IFLNK if m.issym() else stat.S_IFREG
            tree.entries[rel] = Entry(kind | (m.mode & 0o7777), m.uid, m.size, m.linkname)
            if rel in wanted and m.isreg():
                f = tf.extractfile(m)
                if f is not None:
                    tree.files[rel] = f.read()
        size = tf.offset
    return tree, size


@contextlib.contextmanager
def _disk_tree(path: Path, comp: str, report: InspectReport) -> Iterator[Tree]:
    """Decompress a dd image into a sparse scratch file and read its root."""
    from ..disk import access, backends, root_mount
    from . import overlay

    with tempfile.TemporaryDirectory(prefix="imagebuilder-inspect-") as tmp:
        raw = Path(tmp) / "disk.raw"
        with open_stream(path, comp) as src, open(raw, "wb") as dst:
            while chunk := src.read(4 << 20):
                if chunk.count(0) == len(chunk):
                    dst.seek(len(chunk), os.SEEK_CUR)
                else:
                    dst.write(chunk)
            dst.truncate()
        info = access.probe(raw)
        with access.serve(info, Path(tmp), fuse=True) as server:
            layout = server.layout()
            root = root_mount.find_root(layout)
            report.facts["disk"] = {
                "size": info.virtual_size,
                "table": layout.table,
                "root": f"{root.number}:{root.fstype}",
            }
            if root.fstype in backends.EXT:
                assert server.fuse_file is not None
                ed = overlay.DebugfsEditor(server.fuse_file, root.start, Path(tmp), None)
                yield _tree_from_editor(ed.read, ed.entries)
                return
        from ..disk import appliance

        with appliance.session(info, readonly=True, force_tcg=True) as g:
            appliance.mount_fs(g, layout, readonly=True)
            editor = appliance.GuestfsEditor(g)
            yield _tree_from_editor(editor.read, editor.entries)


def _tree_from_editor(read: Any, entries: Any) -> Tree:
    """A Tree from an editor's ``read(path)`` and ``entries(dir)`` ({name: (mode, uid, size)})."""
    tree = Tree()
    for d in ("", "boot", "curtin", "etc", "etc/ssh", "home", "usr/bin", "usr/sbin"):
        for name, (mode, uid, size) in (entries("/" + d) or {}).items():
            tree.entries[f"{d}/{name}".strip("/")] = Entry(mode, uid, size)
    for rel in wanted_files():
        data = read("/" + rel)
        if data is not None:
            tree.files[rel] = data
    return tree


def _os_release(tree: Tree) -> dict[str, str]:
    data = tree.files.get("etc/os-release") or tree.files.get("usr/lib/os-release") or b""
    out = {}
    for line in data.decode(errors="replace").splitlines():
        k, _, v = line.partition("=")
        out[k.strip()] = v.strip().strip("\"'")
    return out


def _exists(tree: Tree, rel: str) -> bool:
    return rel in tree.entries or f"usr/{rel}" in tree.entries


def check_tree(tree: Tree, kind: str, layout: str | None, report: InspectReport) -> None:
    """Add the facts and problems of ``tree`` (kind "tar" or "disk") to ``report``."""
    facts, problems = report.facts, report.problems
    osr = _os_release(tree)
    family = catalogue.family_named(osr.get("ID", ""))
    facts["os"] = f"{osr.get('PRETTY_NAME', '?')}"
    hook = tree.entries.get("curtin/curtin-hooks")
    pin = tree.files.get("curtin/CUSTOM_KERNEL", b"").decode(errors="replace").strip() or None
    kernels = [n for n in tree.listdir("boot") if n.startswith(("vmlinuz-", "vmlinux-"))]
    pkgs = [] if family is None else _packages(tree, family)
    installed = {p["name"] for p in pkgs}
    facts["curtin_hooks"] = (
        "absent"
        if hook is None
        else f"mode {stat.S_IMODE(hook.mode):04o} uid {hook.uid}"
        + ("" if hook.mode & 0o100 else " (NOT executable)")
    )
    facts["custom_kernel"] = pin
    facts["kernels"] = kernels
    if hook is not None and not (stat.S_ISREG(hook.mode) and hook.mode & 0o100):
        problems.append("/curtin/curtin-hooks is not an executable file: curtin fails running it")
    if kind == "disk" and "curtin" not in tree.entries:
        problems.append(
            "no /curtin directory on the root filesystem: curtin cannot find the root of a dd image"
        )
    if pin and pin not in installed:
        problems.append(f"/curtin/CUSTOM_KERNEL pins {pin}, which is not installed in the image")
    if family is not None and not family.maas_installs_kernel:
        name = family.title
        if hook is None:
            problems.append(
                f"{name} image without /curtin/curtin-hooks: curtin would install "
                f"linux-generic, which {name} does not have"
            )
        if not kernels:
            problems.append(
                f"{name} image without a kernel: curtin would have to fetch "
                "one from MAAS's (Ubuntu) archive"
            )
    if pin and not kernels:
        problems.append(f"/curtin/CUSTOM_KERNEL pins {pin} but /boot has no kernel image")
    if kind == "disk" and not kernels:
        problems.append("dd image without a kernel in /boot: it cannot boot")
    if kind == "tar" and pkgs and family is not None:
        problems += _bootloader_problems(tree, pkgs, family)
    facts["cloud_init"] = _exists(tree, "bin/cloud-init")
    facts["netplan"] = _exists(tree, "sbin/netplan")
    if not facts["cloud_init"]:
        problems.append("cloud-init is missing: MAAS runs `cloud-init --version` in the target")
    if not facts["netplan"]:
        problems.append(
            "netplan is missing: MAAS runs `netplan info` in the target (install netplan.io)"
        )
    mid = tree.files.get("etc/machine-id")
    facts["machine_id"] = "absent" if mid is None else ("empty" if not mid.strip() else "set")
    if mid is not None and mid.strip() not in (b"", b"uninitialized"):
        problems.append("/etc/machine-id is set: every deployed machine would share it")
    keys = [n for n in tree.listdir("etc/ssh") if n.startswith("ssh_host_")]
    facts["ssh_host_keys"] = keys
    if keys:
        problems.append(f"ssh host keys in the image ({', '.join(keys)}): remove them")
    users = []
    for line in tree.files.get("etc/passwd", b"").decode(errors="replace").splitlines():
        f = line.split(":")
        if len(f) >= 6 and f[2].isdigit() and 1000 <= int(f[2]) < 65534:
            users.append(f[0])
    facts["users"] = users
    if BUILD_USER in users or BUILD_USER in tree.listdir("home"):
        problems.append(f"the build user {BUILD_USER} is still in the image")
    fstab = [
        ln
        for ln in tree.files.get("etc/fstab", b"").decode(errors="replace").splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    facts["fstab_entries"] = len(fstab) if "etc/fstab" in tree.files else None
    if kind == "tar" and fstab and layout in (None, "cloudimg"):
        problems.append(
            "/etc/fstab has entries: cloud-image tars must not carry one "
            "(it breaks in-memory deploys)"
        )
    if kind == "disk" and not fstab:
        problems.append("dd image without /etc/fstab entries: curtin keeps the image's own fstab")


def _packages(tree: Tree, family: Family) -> Packages:
    return family.packages.parse_database(tree.files.get(family.packages.database, b""))


def _bootloader_problems(tree: Tree, pkgs: Packages, family: Family) -> list[str]:
    """What curtin would install at deploy, per firmware; /curtin/debs counts for the meta."""
    arch = next((p["architecture"] for p in pkgs if p["name"] == family.packages.native), "")
    installed = {p["name"] for p in pkgs}
    carried = {n.split("_")[0] for n in tree.listdir("curtin/debs") if n.endswith(".deb")}
    out = []
    for firmware, wants in family.packages.curtin_installs.get(arch, {}).items():
        missing = [p for p in wants if p not in installed and not (p == wants[0] and p in carried)]
        if missing:
            out.append(
                f"on a {firmware} machine curtin would install {' '.join(missing)}: "
                "the deploy fails where MAAS has no mirror (rebuild with this imagebuilder)"
            )
    return out


def _manifest(path: Path) -> dict[str, Any] | None:
    mpath = path.with_name(path.name + ".manifest.json")
    try:
        data: dict[str, Any] = json.loads(mpath.read_text())
    except (OSError, ValueError):
        return None
    return data


def inspect_image(path: Path) -> InspectReport:
    """Facts and problems of the output at ``path``."""
    report = InspectReport()
    with open(path, "rb") as f:
        head = f.read(512)
    comp = compression(head)
    with open_stream(path, comp) as s:
        first = s.read(512)
    kind = "tar" if first[257:262] == b"ustar" else "disk"
    filetype = FILETYPES[(comp, kind)]
    report.facts.update(
        file=str(path), filetype=filetype, compression=comp, size=path.stat().st_size
    )
    man = _manifest(path)
    layout = (man or {}).get("config", {}).get("layout")
    if kind == "tar":
        with open(path, "rb") as raw:
            hashing = _Hashing(raw)
            stream = open_stream(hashing, comp)
            tree, usize = read_tar(stream)
            if comp != "none":
                stream.close()  # a decompressor does not close the file it was given
            while hashing.read(1 << 20):
                pass
        sha = hashing.sha.hexdigest()
        report.facts.update(uncompressed_size=usize, entries=len(tree.entries))
        check_tree(tree, kind, layout, report)
    else:
        with _disk_tree(path, comp, report) as tree:
            check_tree(tree, kind, layout, report)
        sha = _sha256(path)
    report.facts["sha256"] = sha
    if filetype not in ("tgz", "txz", "tbz", "ddgz", "ddxz", "ddbz2", "ddraw"):
        report.problems.append(f"{filetype} is not a MAAS upload filetype")
    if man is not None:
        out = man.get("output", {})
        if out.get("sha256") != sha or out.get("size") != report.facts["size"]:
            report.problems.append("the file does not match its manifest's sha256/size")
        if out.get("filetype") != filetype:
            report.problems.append(
                f"the manifest says filetype {out.get('filetype')}, the file is {filetype}"
            )
    return report


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def check_image(path: Path) -> None:
    """Raise InspectError listing every problem of ``path``; return if there is none."""
    report = inspect_image(path)
    if report.problems:
        raise InspectError(report.problems, hint=f"run 'imagebuilder inspect {path}' for details")
