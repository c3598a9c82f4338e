"""Publish a finished image to MAAS: the upload recipe and its rules.

``upload_image`` turns an image file (and its ``.manifest.json``) into a MAAS boot
resource: it checks the name, picks filetype, sha256, size, architecture and base
image, then creates the resource, uploads what MAAS lacks and reads it back.
Names are compared as MAAS stores them (``maas_name``, ``same_name``: ``custom/x`` is
kept as ``x`` up to MAAS 3.7), in resume, "already uploaded", list and delete alike.
Resuming follows what MAAS supports (see ``maas_api``): a re-run finds the uploaded
resource with the same name, architecture and sha256; a complete file is not sent
again, an incomplete one is continued on its own ``upload_uri`` from the byte MAAS
reached (a fresh ``POST`` would make MAAS append the resent bytes after the old ones).

It must not: speak HTTP itself (``maas_api`` does), print, or let the API key reach
a log, an exception, a progress event or a process argument.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ImageBuilderError, MAASError
from ..families import catalogue
from ..progress import Progress
from .api import CHUNK_SIZE, CURRENT_MAAS, MAASClient, api_root
from .auth import APIKey, getpass_prompt, read_api_key

__all__ = [
    "UPLOAD_FILETYPES",
    "MAASClient",
    "check_name",
    "delete_image",
    "find_image",
    "getpass_prompt",
    "list_images",
    "maas_name",
    "read_api_key",
    "same_name",
    "upload_image",
]

#: ``filetype=`` values MAAS accepts for uploads (BOOT_RESOURCE_FILE_TYPE_CHOICES_UPLOAD).
UPLOAD_FILETYPES = (
    "tgz", "tbz", "txz", "ddtgz", "ddtbz", "ddtxz", "ddtar", "ddbz2", "ddgz", "ddxz", "ddraw",
)  # fmt: skip
#: MAAS's operating systems (maascommon/osystem OperatingSystemRegistry; onie from 3.8):
#: each is a reserved name, and the only OS/ prefixes MAAS takes.
MAAS_OSYSTEMS = ("ubuntu", "ubuntu-core", "bootloader", "centos", "rhel", "custom", "windows",
                 "suse", "esxi", "ol", "onie")  # fmt: skip
#: The first MAAS whose BootResourceForm.clean_name keeps ``custom/`` (commit e7eb692ff).
KEEPS_CUSTOM_PREFIX = (3, 8)
#: Base image for images whose own distro MAAS cannot name (Debian): an Ubuntu LTS.
FALLBACK_BASE_IMAGE = "ubuntu/jammy"

# File name endings -> filetype, longest first. A gzip of a raw disk is ddgz.
_SUFFIXES = (
    (".dd.tar.gz", "ddtgz"), (".dd.tgz", "ddtgz"), (".dd.tar.bz2", "ddtbz"),
    (".dd.tar.xz", "ddtxz"), (".dd.tar", "ddtar"),
    (".tar.gz", "tgz"), (".tgz", "tgz"), (".tar.bz2", "tbz"), (".tbz", "tbz"),
    (".tar.xz", "txz"), (".txz", "txz"),
    (".gz", "ddgz"), (".xz", "ddxz"), (".bz2", "ddbz2"),
    (".img", "ddraw"), (".raw", "ddraw"), (".dd", "ddraw"),
)  # fmt: skip


def maas_name(name: str, version: tuple[int, ...] = CURRENT_MAAS) -> str:
    """The name MAAS stores and lists for a custom image uploaded as ``name``.

    MAAS's BootResourceForm.clean_name (maasserver/forms/__init__.py): up to 3.7 a
    leading ``custom/`` is stripped (``custom/x`` is stored as ``x``), from 3.8 the
    name is kept as given. Refused here, before any request, is what MAAS refuses on
    every boot source (an OS name or ``centos`` + 1-2 digits after the prefix, an OS
    it does not know, more than one ``/``) and what it would not take as a custom
    image (``ubuntu/*`` fails to deploy; ``centos/*`` etc. are that OS's images).
    Release names (``jammy``) are reserved by the MAAS's boot sources: its answer says.
    """
    hint = "use custom/NAME, e.g. custom/jammy-web"
    if not name or name != name.strip() or any(c.isspace() for c in name):
        raise ConfigError(f"bad image name {name!r}", hint=hint)
    if name.count("/") > 1 or name.startswith("/") or name.endswith("/"):
        raise ConfigError(f"bad image name {name!r}: MAAS takes NAME or OS/NAME", hint=hint)
    prefix, _, rest = name.rpartition("/")
    if prefix == "ubuntu":
        raise ConfigError(
            f"refusing the name {name!r}: MAAS treats ubuntu/* as its own Ubuntu images and "
            "deploying it fails with 'has no kernels available'",
            hint=f"use custom/{rest} (with --base-image ubuntu/SERIES)",
        )
    if prefix not in ("", "custom"):
        why = f"MAAS would take it as a {prefix} image, not a custom one"
        if prefix not in MAAS_OSYSTEMS:
            why = f"MAAS knows no operating system {prefix!r}"
        raise ConfigError(f"refusing the name {name!r}: {why}", hint=f"use custom/{rest}")
    if rest in MAAS_OSYSTEMS or re.fullmatch(r"centos\d\d?", rest):
        raise ConfigError(
            f'refusing the name {name!r}: MAAS reserves {rest!r} ("{rest} is a reserved name")',
            hint=hint,
        )
    return name if prefix and version >= KEEPS_CUSTOM_PREFIX else rest


def check_name(name: str) -> None:
    """Refuse names MAAS would refuse, or take but could not deploy, before any request."""
    maas_name(name)


def same_name(listed: object, wanted: str) -> bool:
    """Whether MAAS's ``name`` (as listed) is the custom image ``wanted`` (either spelling).

    ``custom/x`` and ``x`` are one custom image to MAAS: stored as ``x`` up to 3.7,
    and on 3.8 a bare ``x`` is still OS ``custom``, release ``x``.
    """
    if not isinstance(listed, str):
        return False
    return listed.removeprefix("custom/") == wanted.removeprefix("custom/")


def find_image(
    client: MAASClient, name: str, architecture: str | None = None
) -> dict[str, Any] | None:
    """The uploaded resource ``name`` (either spelling, of ``architecture``), read in full."""
    for res in client.list_resources("uploaded"):
        if same_name(res.get("name"), name) and architecture in (None, res.get("architecture")):
            return client.get(int(res["id"]))
    return None


@dataclass(frozen=True)
class _ImageFacts:
    sha256: str
    size: int
    filetype: str
    architecture: str
    base_image: str


def _manifest(image: Path) -> dict[str, Any]:
    path = image.with_name(image.name + ".manifest.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _sniff_filetype(image: Path) -> str | None:
    name = image.name.lower()
    for suffix, filetype in _SUFFIXES:
        if name.endswith(suffix):
            return filetype
    return None


def _sha256(image: Path, progress: Progress) -> str:
    h = hashlib.sha256()
    size = image.stat().st_size
    done = 0
    with image.open("rb") as f:
        while block := f.read(CHUNK_SIZE):
            h.update(block)
            done += len(block)
            progress.counter("sha256", done, size)
    return h.hexdigest()


def _default_base_image(series: str | None) -> str:
    if series:
        try:
            rel = catalogue.get(series)
        except ImageBuilderError:
            return FALLBACK_BASE_IMAGE
        return rel.family.maas_base_image(rel)
    return FALLBACK_BASE_IMAGE


def _facts(
    image: Path,
    progress: Progress,
    *,
    filetype: str | None,
    architecture: str | None,
    base_image: str | None,
) -> _ImageFacts:
    if not image.is_file():
        raise ConfigError(f"no image file {image}", hint="build one first, or check the path")
    man = _manifest(image)
    cfg = man.get("config") if isinstance(man.get("config"), dict) else {}
    assert isinstance(cfg, dict)
    size = image.stat().st_size
    sha = str(man.get("sha256") or "").lower()
    if man.get("size") != size or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        sha = _sha256(image, progress)  # no manifest, or it describes another file
    filetype = filetype or man.get("filetype") or _sniff_filetype(image)
    if filetype not in UPLOAD_FILETYPES:
        raise ConfigError(
            f"cannot tell the MAAS filetype of {image.name}"
            + (f" ({filetype!r} is not one)" if filetype else ""),
            hint=f"pass --filetype, one of: {', '.join(UPLOAD_FILETYPES)}",
        )
    arch = architecture or (f"{cfg['arch']}/generic" if cfg.get("arch") else None)
    if not arch:
        raise ConfigError(
            f"no architecture for {image.name}: its manifest does not say",
            hint="pass --architecture, e.g. amd64/generic",
        )
    if "/" not in arch:
        arch += "/generic"
    base = base_image or _default_base_image(cfg.get("series"))
    return _ImageFacts(sha, size, str(filetype), arch, base)


def _newest_file(resource: Mapping[str, Any]) -> dict[str, Any] | None:
    """The single file of the newest set (versions YYYYMMDD[.N]), as the maas CLI takes it."""
    sets = resource.get("sets") or {}

    def order(version: str) -> tuple[int, ...]:
        return tuple(int(p) if p.isdigit() else -1 for p in version.split("."))

    if not sets:
        return None
    newest = sets[max(sets, key=order)]
    files = list((newest.get("files") or {}).values())
    return files[0] if len(files) == 1 else None


def upload_image(
    image: Path,
    *,
    maas_url: str,
    api_key: str,
    name: str,
    title: str | None,
    architecture: str | None,
    base_image: str | None,
    filetype: str | None,
    progress: Progress,
    keep_old: bool = False,
) -> dict[str, Any]:
    """Upload ``image`` as boot resource ``name``; returns the resource as MAAS reads it back."""
    maas_name(name)
    api_root(maas_url)
    APIKey.parse(api_key)
    image = Path(image)
    with progress.stage("maas-upload", f"{image.name} as {name} to {maas_url}"):
        facts = _facts(
            image, progress, filetype=filetype, architecture=architecture, base_image=base_image
        )
        with MAASClient(maas_url, api_key) as client:
            return _upload(client, image, facts, name, title, keep_old, progress)


def _upload(
    client: MAASClient,
    image: Path,
    facts: _ImageFacts,
    name: str,
    title: str | None,
    keep_old: bool,
    progress: Progress,
) -> dict[str, Any]:
    rfile: dict[str, Any] | None = None
    resource_id = -1
    uploaded = client.list_resources("uploaded")
    mine = [
        r
        for r in uploaded
        if same_name(r.get("name"), name) and r.get("architecture") == facts.architecture
    ]
    if len(mine) > 1:  # MAAS 3.8 after an older one: x and custom/x; POST reuses the stored
        stored = maas_name(name, client.version())
        mine.sort(key=lambda r: r.get("name") != stored)
    if mine:
        existing = client.get(int(mine[0]["id"]))
        old = _newest_file(existing)
        if old and old.get("sha256") == facts.sha256 and int(old.get("size", -1)) == facts.size:
            if old.get("complete"):
                progress.info(f"MAAS already has {name} ({facts.architecture}) with this sha256")
                return existing
            if old.get("upload_uri"):
                rfile, resource_id = old, int(existing["id"])
    if rfile is None and client.version() >= (3, 5):
        _refuse_duplicate(client, uploaded, facts)
    if rfile is None:
        created = client.create_resource(
            name=name,
            architecture=facts.architecture,
            sha256=facts.sha256,
            size=facts.size,
            filetype=facts.filetype,
            title=title,
            base_image=facts.base_image,
            keep_old=keep_old,
        )
        resource_id = int(created["id"])
        rfile = _newest_file(created)
        if rfile is None:
            raise MAASError(f"MAAS created {name} but shows no single file to upload to")
    offset = client.server_bytes(rfile)
    if offset >= facts.size or rfile.get("complete"):
        progress.info(f"MAAS already holds all {facts.size} bytes of {name}")
    else:
        if offset:
            progress.info(f"resuming {name} at byte {offset} of {facts.size}")
        start = time.monotonic()
        sent = client.upload_file(str(rfile["upload_uri"]), image, progress, offset=offset)
        secs = max(time.monotonic() - start, 1e-6)
        progress.info(f"sent {sent} bytes in {secs:.1f} s ({sent / secs / 2**20:.0f} MiB/s)")
    resource = client.get(resource_id)
    final = _newest_file(resource)
    if final is None or final.get("sha256") != facts.sha256:
        raise MAASError(f"MAAS shows a different file for {name} than the one uploaded")
    if not final.get("complete"):
        progress.info(
            f"MAAS is still copying {name} to its other region controllers "
            f"({float(final.get('progress') or 0):.0f}%)"
        )
    return resource


def _refuse_duplicate(
    client: MAASClient, uploaded: list[dict[str, Any]], facts: _ImageFacts
) -> None:
    """MAAS >= 3.5 stores one file per sha256 and cannot take a second upload of it.

    A new BootResourceFile with a known sha256 shares the file on disk but starts with
    nothing synced, so MAAS appends the first chunk past the end, answers "Too much
    data received." and deletes the shared file, damaging the image that had it.
    """
    for summary in uploaded:
        res = client.get(int(summary["id"]))
        for version, rset in (res.get("sets") or {}).items():
            for rfile in (rset.get("files") or {}).values():
                if rfile.get("sha256") == facts.sha256:
                    other = f"{res.get('name')} ({res.get('architecture')}, set {version})"
                    raise MAASError(
                        f"MAAS already holds this exact file as {other}; MAAS >= 3.5 keeps one "
                        "copy per sha256 and a second upload of it fails with 'Too much data "
                        "received.' and damages the first",
                        hint="upload it under that name and architecture, or delete that "
                        "image first (imagebuilder maas delete NAME)",
                    )


def list_images(*, maas_url: str, api_key: str) -> list[dict[str, Any]]:
    """The uploaded (custom) boot resources of a MAAS, as ``GET boot-resources/?type=uploaded``."""
    with MAASClient(maas_url, api_key) as client:
        return client.list_resources("uploaded")


def delete_image(
    *, maas_url: str, api_key: str, name: str, architecture: str | None = None
) -> list[dict[str, Any]]:
    """Delete every uploaded resource called ``name`` (of ``architecture``); returns them."""
    with MAASClient(maas_url, api_key) as client:
        doomed = [
            r
            for r in client.list_resources("uploaded")
            if same_name(r.get("name"), name) and architecture in (None, r.get("architecture"))
        ]
        if not doomed:
            raise MAASError(
                f"MAAS has no uploaded image named {name}"
                + (f" for {architecture}" if architecture else ""),
                hint="see `imagebuilder maas list`",
            )
        for r in doomed:
            client.delete(int(r["id"]))
        return doomed
