"""What a mirror would install, resolved with the host's apt in a throwaway apt root.

Used for the dpkg families' bootstrap bases: ``resolve_versions`` runs the host's
``apt-get`` against a private root (``APT_CONFIG``: only the recipe's sources and
keyring, an empty dpkg status, no recommends, the native architecture only), which
downloads the signed indexes (``apt-get update``, ~10 MB for Debian main) and
simulates mmdebstrap's minbase plus the recipe's packages (``apt-get -s``), with
no root and no VM. ``fetch_package`` downloads one package the same way (the
netboot installer) and ``package_payload`` streams its files. Runs host programs through
:mod:`imagebuilder.run` only; never opens a disk or the cache.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from ..errors import CommandError, DownloadError, SourceError, host_package_hint
from ..run import run, stream, which
from .seam import Resolution

_INST = re.compile(r"^Inst (\S+) (?:\[\S+\] )?\((\S+) [^\[]*\[([^\]]+)\]\)", re.M)


def _apt_conf(root: Path, arch: str, keyring: Path) -> str:
    (root / "etc/apt/apt.conf.d").mkdir(parents=True)
    (root / "etc/apt/preferences.d").mkdir(parents=True)
    (root / "etc/apt/trusted.gpg.d").mkdir(parents=True)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True)
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text("")
    return "".join(
        f"{line}\n"
        for line in (
            f'Dir "{root}/";',
            f'Dir::State::Status "{root}/var/lib/dpkg/status";',
            f'Dir::Etc::Trusted "{keyring}";',
            f'Dir::Etc::TrustedParts "{root}/etc/apt/trusted.gpg.d/";',
            f'APT::Architecture "{arch}";',
            f'APT::Architectures "{arch}";',
            'APT::Install-Recommends "false";',
            'Acquire::Languages "none";',
            'Acquire::GzipIndexes "false";',
            'Acquire::Retries "3";',
            'pkgCacheGen::ForceEssential ",";',
            'Debug::NoLocking "true";',
        )
    )


@contextlib.contextmanager
def apt_root(sources: Sequence[str], arch: str, keyring: Path) -> Iterator[dict[str, str]]:
    """A throwaway apt root; yields the environment that points apt-get at it."""
    with tempfile.TemporaryDirectory(prefix="imagebuilder-apt-") as tmp:
        root = Path(tmp)
        conf = root / "apt.conf"
        conf.write_text(_apt_conf(root, arch, keyring.resolve()))
        (root / "etc/apt/sources.list").write_text("".join(f"{s}\n" for s in sources))
        env = {k: v for k, v in os.environ.items() if k.lower().endswith("_proxy")}
        env["APT_CONFIG"] = str(conf)
        yield env


def parse_simulation(text: str) -> dict[str, tuple[str, str]]:
    """``Inst name (version release [arch])`` lines of ``apt-get -s`` -> {name: (ver, arch)}."""
    return {m.group(1): (m.group(2), m.group(3)) for m in _INST.finditer(text)}


def stanzas(path: Path) -> Iterator[str]:
    """The paragraphs of a Packages (or status) file."""
    block: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                block.append(line)
            elif block:
                yield "".join(block)
                block = []
    if block:
        yield "".join(block)


def _field(stanza: str, name: str) -> str | None:
    m = re.search(rf"^{name}: *(.*)$", stanza, re.M)
    return m.group(1).strip() if m else None


def installed_status(lists: Path, wanted: Mapping[str, tuple[str, str]]) -> str:
    """A dpkg status file that marks ``wanted`` (name -> (version, arch)) installed."""
    out: dict[str, str] = {}
    for index in sorted(lists.glob("*_Packages")):
        for stanza in stanzas(index):
            name = _field(stanza, "Package")
            if name is None or name not in wanted or name in out:
                continue
            if (_field(stanza, "Version"), _field(stanza, "Architecture")) != wanted[name]:
                continue
            lines = [
                ln
                for ln in stanza.splitlines()
                if not ln.startswith(("Filename:", "Size:", "MD5sum:", "SHA256:", "SHA1:"))
            ]
            lines.insert(1, "Status: install ok installed")
            out[name] = "\n".join(lines) + "\n"
    missing = sorted(set(wanted) - set(out))
    if missing:
        raise SourceError(
            f"apt chose packages its own indexes do not list: {', '.join(missing[:5])}",
            hint="the mirror changed while resolving; run the command again",
        )
    return "\n".join(out[n] for n in sorted(out))


def release_dates(lists: Path) -> dict[str, int]:
    """Codename (bookworm, bookworm-updates...) -> Date of each (In)Release file apt fetched."""
    out: dict[str, int] = {}
    for f in sorted(lists.glob("*Release")):
        text = f.read_text(errors="replace")
        name = _field(text, "Codename") or _field(text, "Suite")
        date = _field(text, "Date")
        if name and date:
            with contextlib.suppress(TypeError, ValueError):
                out[name] = int(email.utils.parsedate_to_datetime(date).timestamp())
    return out


#: The host programs used here and the host packages that ship them.
HOST_PACKAGES = {"apt-get": "apt", "dpkg-deb": "dpkg"}


def _host(tool: str) -> str:
    return which(tool, HOST_PACKAGES[tool])


def _apt_get(env: dict[str, str], *args: str) -> str:
    _host("apt-get")
    try:
        proc = run(["apt-get", "-q", *args], env=env, timeout=900)
    except CommandError as exc:
        text = exc.stderr
        if args[0] == "update":
            raise DownloadError(
                f"apt-get update failed for the bootstrap mirror: {exc.message}",
                hint="check --mirror and HTTP(S)_PROXY; the indexes must be signed by the "
                "release's archive keyring",
                details=exc.details,
            ) from exc
        unknown = re.findall(r"Unable to locate package (\S+)", text)
        raise SourceError(
            "apt cannot resolve the bootstrap package set"
            + (f": no package {', '.join(unknown)}" if unknown else f": {exc.message}"),
            hint="check --extra-packages names against the mirror's suite and components",
            details=exc.details,
        ) from exc
    return proc.stdout.decode("utf-8", "replace")


def resolve_versions(
    sources: Sequence[str], suite: str, arch: str, keyring: Path, include: Sequence[str]
) -> Resolution:
    """The packages and versions mmdebstrap minbase + ``include`` installs from ``sources``."""
    if not keyring.is_file():
        raise SourceError(
            f"archive keyring {keyring} is missing",
            hint=host_package_hint("debian-archive-keyring", "ubuntu-keyring"),
        )
    narrow = f"?narrow(?or(?archive(^{suite}$),?codename(^{suite}$)),?architecture({arch}),"
    with apt_root(sources, arch, keyring) as env:
        root = Path(env["APT_CONFIG"]).parent
        lists = root / "var/lib/apt/lists"
        _apt_get(env, "update", "--error-on=any")
        essential = parse_simulation(_apt_get(env, "--simulate", "install", f"{narrow}?essential)"))
        if not essential:
            raise SourceError(
                f"the mirror has no Essential packages for {suite} {arch}",
                hint="check --mirror, the series and --arch",
            )
        (root / "var/lib/dpkg/status").write_text(installed_status(lists, essential))
        rest = parse_simulation(
            _apt_get(
                env,
                "--simulate",
                "install",
                *include,
                f"{narrow}?and(?priority(required),?not(?essential)))",
            )
        )
        dates = release_dates(lists)
    versions = {name: ver for name, (ver, _) in {**essential, **rest}.items()}
    return Resolution(dict(sorted(versions.items())), dates)


def _fetch_step(env: dict[str, str], cwd: Path, package: str, *args: str) -> None:
    _host("apt-get")
    try:
        run(["apt-get", "-q", *args], env=env, cwd=cwd, timeout=1800)
    except CommandError as exc:
        raise DownloadError(
            f"apt-get {args[0]} for {package} failed: {exc.message}",
            hint="check --mirror and HTTP(S)_PROXY; the mirror must be signed by the "
            "release's archive keyring",
            details=exc.details,
        ) from exc


def fetch_package(
    sources: Sequence[str], arch: str, keyring: Path, package: str, dest: Path
) -> Path:
    """``package``'s .deb downloaded into ``dest`` by apt in a private root: the signed
    ``InRelease`` -> ``Packages`` -> ``.deb`` chain is checked by apt itself."""
    with apt_root(sources, arch, keyring) as env:
        _fetch_step(env, dest, package, "update", "--error-on=any")
        _fetch_step(env, dest, package, "download", package)
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if not debs:
        raise SourceError(f"apt-get download left no {package} .deb", hint="run again")
    return debs[0]


@contextlib.contextmanager
def package_payload(deb: Path) -> Iterator[IO[bytes]]:
    """The files of ``deb`` as a tar stream (``dpkg-deb --fsys-tarfile``)."""
    with stream([_host("dpkg-deb"), "--fsys-tarfile", deb]) as out:
        yield out
