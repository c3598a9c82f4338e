"""A local MAAS boot-resources API on 127.0.0.1, for tests of ``imagebuilder.maas``.

Written from MAAS's source (canonical/maas: ``maasserver/api/boot_resources.py``,
``maasserver/forms/__init__.py`` BootResourceForm, ``maasserver/api/auth.py`` with
piston's OAuth checks, ``maasservicelayer/utils/image_local_files.py``,
``maasserver/middleware.py``), not copied from it. It keeps MAAS's rules and texts:

* OAuth 1.0 PLAINTEXT checked against one configured key, with piston's order and
  texts: unknown consumer -> ``Authorization Error: Invalid API key.``, unknown token,
  expired timestamp (300 s), reused nonce, and a wrong secret -> ``Invalid signature.
  Expected signature base string: &<real secret>`` (piston really leaks it; clients
  must not relay 401 bodies). A missing header is a bare 401 (piston's challenge).
* ``POST boot-resources/``: form rules (name, architecture among the *synced* ones,
  filetype, sha256 of 64 characters -- MAAS checks the length, not hex --, integer
  size, base image), reserved names, errors as MAAS's JSON ``{field: [texts]}``.
  Each POST adds a new set and file; without ``keep_old`` older files go.
* Storage as MAAS >= 3.5 keeps it: one file on disk per sha256 shared by every
  BootResourceFile with that sha256, and per-file, per-region synced byte counts.
  ``PUT .../upload/F/`` appends (no offset), checks Content-Length, "Too much data
  received." (and drops the partial file, as MAAS does), "Cannot upload to a
  complete file.", and on the last byte "Saved content does not match given SHA256
  value.". Database changes of a failed request roll back, disk writes do not.
  So, as in MAAS, a second file with a known sha256 starts at 0 synced bytes over a
  full shared file, and its first chunk gets "Too much data received." and deletes it.
  ``version="3.4.0"`` switches to LargeFile rules (progress = size / bytes).
* Names as ``BootResourceForm.clean_name`` (``maasserver/forms/__init__.py``) keeps
  them: MAAS <= 3.7 strips a leading ``custom/`` (``custom/x`` is stored as ``x``);
  3.8 stores the name as given (commit e7eb692ff, "Avoid stripping custom/"). Then
  ``x`` must not be a reserved name: an OS (``OperatingSystemRegistry``, ``onie`` from
  3.8), an ``os/release`` of the boot source cache or either half of one, or
  ``centos\\d\\d?``. A POST reuses the uploaded resource with the stored name and
  architecture (``get_existing_resource``); ``boot_resource_to_dict`` in
  ``maasserver/api/boot_resources.py`` lists and reads ``name`` as stored. Resources
  are looked up by id only (the list filters by ``type`` alone).
* Observation and faults for tests: ``requests``, ``chunks`` (what was appended
  where), ``put_body_bytes``; ``cut`` drops the connection during one PUT.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_API_KEY = "cK7uVQbPnWq3aZ8xLm:tK2rYH9dFj4sPw6eNb:sEcReT5hG8kJ2mN4pQ7rT1vX3zB6cD9f"
API = "/MAAS/api/2.0/"
UPLOAD_FILETYPES = {
    "tgz": "root-tgz", "tbz": "root-tbz", "txz": "root-txz", "ddtgz": "root-dd",
    "ddtbz": "root-dd.tar.bz2", "ddtxz": "root-dd.tar.xz", "ddtar": "root-dd.tar",
    "ddbz2": "root-dd.bz2", "ddgz": "root-dd.gz", "ddxz": "root-dd.xz", "ddraw": "root-dd.raw",
}  # fmt: skip
OSYSTEMS = ["ubuntu", "ubuntu-core", "bootloader", "centos", "rhel", "custom", "windows",
            "suse", "esxi", "ol"]  # fmt: skip
LINUX_OSYSTEMS = ("ubuntu", "centos", "rhel", "ol")
UBUNTU_SERIES = ("bionic", "focal", "jammy", "noble", "oracular", "plucky", "questing",
                 "resolute")  # fmt: skip
#: os/release pairs of the images MAAS's boot sources offer (BootSourceCache): reserved.
BOOT_SOURCE_CACHE = tuple(f"ubuntu/{series}" for series in UBUNTU_SERIES)
FORBIDDEN_TEXT = (
    "User does not have permission to perform this operation. "
    "The user should have permission 'can_edit_boot_entities'"
)


@dataclass
class Cut:
    """Drop the connection in the PUT that would take appended bytes past ``after_bytes``.

    ``mode`` "mid-body": read half the body, append nothing, close (the client is
    still sending). "after-append": append and count the chunk, close without answer.
    """

    after_bytes: int
    mode: str = "mid-body"
    fired: bool = False


@dataclass
class Chunk:
    file_id: int
    offset: int  # size of the file on disk before this chunk
    length: int


@dataclass
class Request:
    method: str
    path: str
    status: int
    content_type: str
    content_length: int | None
    authorization: str


@dataclass
class _File:
    id: int
    filename: str
    filetype: str
    sha256: str
    size: int
    on_disk: str
    synced: dict[str, int] = field(default_factory=dict)  # region -> bytes


@dataclass
class _Set:
    version: str
    files: list[_File] = field(default_factory=list)


@dataclass
class _Resource:
    id: int
    rtype: int  # 0 synced, 2 uploaded
    name: str
    architecture: str
    base_image: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    sets: list[_Set] = field(default_factory=list)


class _Error(Exception):
    def __init__(self, status: int, body: str | dict[str, list[str]]) -> None:
        super().__init__(str(body))
        self.status, self.body = status, body


class FakeMAAS:
    """Start with ``with FakeMAAS(tmp_path) as maas:``; ``maas.url`` is the MAAS URL."""

    def __init__(
        self,
        store: Path,
        *,
        api_key: str = DEFAULT_API_KEY,
        architectures: tuple[str, ...] = (
            "amd64/ga-22.04",
            "amd64/ga-24.04",
            "amd64/generic",
            "amd64/hwe-22.04",
            "amd64/hwe-24.04",
        ),
        synced: tuple[tuple[str, str], ...] = (
            ("ubuntu/jammy", "amd64/ga-22.04"),
            ("ubuntu/noble", "amd64/ga-24.04"),
        ),
        regions: int = 1,
        version: str = "3.6.0",
        admin: bool = True,
        commissioning: str = "ubuntu/noble",
        boot_source_cache: tuple[str, ...] = BOOT_SOURCE_CACHE,
    ) -> None:
        self.store = Path(store)
        self.store.mkdir(parents=True, exist_ok=True)
        self.consumer_key, self.token_key, self.token_secret = api_key.split(":")
        self.architectures = sorted(architectures)
        self.regions = [f"region-{i + 1}" for i in range(regions)]
        self.version = version
        major_minor = tuple(int(x) for x in version.split(".")[:2])
        self.legacy = major_minor < (3, 5)
        self.strips_custom = major_minor < (3, 8)  # clean_name before commit e7eb692ff
        self.osystems = OSYSTEMS + ([] if self.strips_custom else ["onie"])
        self.boot_source_cache = boot_source_cache
        self.admin = admin
        self.commissioning = commissioning
        self.requests: list[Request] = []
        self.chunks: list[Chunk] = []
        self.put_body_bytes = 0
        self.cut: Cut | None = None
        self._lock = threading.RLock()
        self._nonces: set[str] = set()
        self._ids = iter(range(1, 1 << 30))
        self._resources: dict[int, _Resource] = {}
        for name, arch in synced:
            res = _Resource(next(self._ids), 0, name, arch, extra={"subarches": "generic"})
            self._resources[res.id] = res
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/MAAS"

    def __enter__(self) -> FakeMAAS:
        fake = self

        class Handler(_Handler):
            maas = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ---- helpers for tests -----------------------------------------------------
    def disk_size(self, sha256: str) -> int:
        files = [f for f in self._all_files() if f.sha256 == sha256]
        path = self.store / files[0].on_disk if files else None
        return path.stat().st_size if path and path.exists() else 0

    def uploaded(self) -> list[dict[str, Any]]:
        return [self._to_dict(r, True) for r in self._resources.values() if r.rtype == 2]

    # ---- model -----------------------------------------------------------------
    def _all_files(self) -> list[_File]:
        return [f for r in self._resources.values() for s in r.sets for f in s.files]

    def _file_bytes(self, f: _File) -> int:
        """Bytes a file has as MAAS counts them (synced rows; LargeFile.size when legacy)."""
        if self.legacy:
            path = self.store / f.on_disk
            return path.stat().st_size if path.exists() else 0
        return sum(f.synced.values())

    def _file_progress(self, f: _File) -> float:
        done = self._file_bytes(f)
        if self.legacy:
            return 0 if done <= 0 else f.size / float(done)
        return 100.0 * done / (f.size * len(self.regions)) if f.synced else 0.0

    def _file_complete(self, f: _File) -> bool:
        if self.legacy:
            return self._file_bytes(f) == f.size
        return self._file_progress(f) == 100.0

    def _to_dict(self, res: _Resource, with_sets: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": res.id,
            "type": "Synced" if res.rtype == 0 else "Uploaded",
            "name": res.name,
            "architecture": res.architecture,
            "resource_uri": f"{API}boot-resources/{res.id}/",
            "last_deployed": None,
            **res.extra,
        }
        if res.base_image:
            out["base_image"] = res.base_image
        if with_sets:
            out["sets"] = {}
            for s in reversed(res.sets):
                total = sum(f.size for f in s.files)
                cur = sum(self._file_bytes(f) for f in s.files)
                prog = 100.0 * cur / (total * len(self.regions)) if total else 0.0
                sd: dict[str, Any] = {"version": s.version, "label": "uploaded", "size": total}
                sd["complete"] = (
                    all(self._file_complete(f) for f in s.files) if self.legacy else prog == 100.0
                )
                if not sd["complete"]:
                    sd["progress"] = prog
                sd["files"] = {}
                for f in s.files:
                    fd: dict[str, Any] = {
                        "filename": f.filename, "filetype": f.filetype, "sha256": f.sha256,
                        "filename_on_disk": f.on_disk, "size": f.size,
                        "complete": self._file_complete(f),
                    }  # fmt: skip
                    if not fd["complete"]:
                        fd["progress"] = self._file_progress(f)
                        if res.rtype == 2:
                            fd["upload_uri"] = f"{API}boot-resources/{res.id}/upload/{f.id}/"
                    sd["files"][f.filename] = fd
                out["sets"][s.version] = sd
        return out

    # ---- OAuth (piston's verify_request order, MAAS's wording) -----------------
    def check_auth(self, header: str) -> None:
        if not header.strip().startswith("OAuth"):
            raise _Error(401, "Forbidden")  # piston's challenge: rc.FORBIDDEN is a 401
        params = {}
        for item in header.strip()[5:].split(","):
            if "=" in item:
                k, v = item.split("=", 1)
                params[k.strip()] = unquote(v.strip().strip('"'))
        needed = ("consumer_key", "token", "signature", "signature_method", "timestamp", "nonce")
        if any(f"oauth_{n}" not in params for n in needed):
            raise _Error(401, "Forbidden")
        if not params["oauth_timestamp"].isdigit():
            raise _Error(
                400,
                "Bad Request: the following problems were found among the auth params: "
                "oauth_timestamp has an unexpected type",
            )

        def fail(text: str) -> _Error:
            return _Error(401, f"Authorization Error: {text!r}")

        if params.get("oauth_version", "1.0") != "1.0":
            raise fail(f"OAuth version {params['oauth_version']} not supported.")
        if params["oauth_consumer_key"] != self.consumer_key:
            raise _Error(401, "Authorization Error: Invalid API key.")
        if params["oauth_token"] != self.token_key:
            raise fail(f"Invalid access token: {params['oauth_token']}")
        now, ts = int(time.time()), int(params["oauth_timestamp"])
        if now - ts > 300:
            raise fail(
                f"Expired timestamp: given {ts} and now {now} has a greater difference "
                "than threshold 300"
            )
        if params["oauth_nonce"] in self._nonces:
            raise fail(f"Nonce already used: {params['oauth_nonce']}")
        self._nonces.add(params["oauth_nonce"])
        if params["oauth_signature_method"] != "PLAINTEXT":
            raise fail(
                f"Signature method {params['oauth_signature_method']} not supported try one "
                "of the following: PLAINTEXT, HMAC-SHA1"
            )
        expected = "&" + self.token_secret
        if params["oauth_signature"] != expected:
            raise fail(f"Invalid signature. Expected signature base string: {expected}")

    # ---- handlers --------------------------------------------------------------
    def list_resources(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        rtype = query.get("type", ["all"])[-1]
        if rtype not in ("all", "synced", "uploaded"):
            raise _Error(
                400,
                f"'{rtype}' is not a valid boot resource type. "
                "Available types: ['synced', 'uploaded']",
            )
        res = sorted(self._resources.values(), key=lambda r: (r.rtype, r.name, r.architecture))
        if rtype != "all":
            res = [r for r in res if r.rtype == (0 if rtype == "synced" else 2)]
        return [self._to_dict(r, False) for r in res]

    def get(self, rid: int) -> _Resource:
        if rid not in self._resources:
            raise _Error(404, "No BootResource matches the given query.")
        return self._resources[rid]

    def delete(self, rid: int) -> None:
        res = self.get(rid)
        doomed = {f.id for s in res.sets for f in s.files}
        keep = {f.sha256 for f in self._all_files() if f.id not in doomed}
        for s in res.sets:
            for f in s.files:
                if f.sha256 not in keep:
                    (self.store / f.on_disk).unlink(missing_ok=True)
        del self._resources[rid]

    def create(self, data: dict[str, str]) -> _Resource:
        data.setdefault("filetype", "tgz")
        errors: dict[str, list[str]] = {}
        req = "This field is required."
        name = self._clean_name(data.get("name", ""), errors)
        arch = data.get("architecture", "")
        if not arch:
            errors["architecture"] = [req]
        elif arch not in self.architectures:
            choices = ", ".join(f"'{a}'" for a in self.architectures) or "''"
            errors["architecture"] = [
                f"'{arch}' is not a valid architecture.  It should be one of: {choices}."
            ]
        ftype = data.get("filetype", "")
        if ftype not in UPLOAD_FILETYPES:
            errors["filetype"] = [
                f"Select a valid choice. {ftype} is not one of the available choices."
            ]
        sha = data.get("sha256", "")
        if not sha:
            errors["sha256"] = [req]
        elif len(sha) != 64:
            word = "least" if len(sha) < 64 else "most"
            errors["sha256"] = [
                f"Ensure this value has at {word} 64 characters (it has {len(sha)})."
            ]
        size_text = data.get("size", "").strip()
        if not size_text:
            errors["size"] = [req]
        elif not re.fullmatch(r"[+-]?\d+", size_text):
            errors["size"] = ["Enter a whole number."]
        base = self._clean_base_image(data, name, errors)
        if errors:
            raise _Error(400, errors)
        size = int(size_text)
        if any(f.sha256 == sha and f.size != size for f in self._all_files()):
            raise _Error(400, "File already exists with sha256 that is of different size.")
        res = next(
            (r for r in self._resources.values()
             if (r.rtype, r.name, r.architecture) == (2, name, arch)),
            None,
        )  # fmt: skip
        if res is None:
            res = _Resource(next(self._ids), 2, name, arch)
            self._resources[res.id] = res
        res.extra = {"subarches": arch.split("/")[1], "title": data.get("title", "")}
        res.base_image = res.base_image or base
        day = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d")
        same_day = [s.version for s in res.sets if s.version.startswith(day)]
        idx = max((int(v.split(".")[1]) for v in same_day if "." in v), default=0)
        new_set = _Set(day if not same_day else f"{day}.{idx + 1}")
        res.sets.append(new_set)
        shared = next((f.on_disk for f in self._all_files() if f.sha256 == sha), None)
        on_disk = shared or self._on_disk_name(sha)
        filetype = UPLOAD_FILETYPES[ftype]
        filename = {"root-tgz": "root.tgz", "root-tbz": "root.tbz", "root-txz": "root.txz"}
        rfile = _File(next(self._ids), filename.get(filetype, filetype), filetype, sha, size,
                      on_disk)  # fmt: skip
        new_set.files.append(rfile)
        if data.get("keep_old", "").lower() not in ("true", "on", "1", "yes"):
            others = [f for s in res.sets if s is not new_set for f in s.files]
            for s in res.sets:
                if s is not new_set:
                    s.files = []
            live = {f.sha256 for f in self._all_files()}
            for f in others:
                if f.sha256 not in live:
                    (self.store / f.on_disk).unlink(missing_ok=True)
        return res

    def _on_disk_name(self, sha: str) -> str:
        names = [f.on_disk for f in self._all_files()]
        for n in range(7, 64):
            if not any(x.startswith(sha[:n]) for x in names):
                return sha[:n]
        return sha

    def _clean_name(self, name: str, errors: dict[str, list[str]]) -> str:
        """BootResourceForm.clean_name: the name as MAAS stores it, or an error."""
        if not name:
            errors["name"] = ["This field is required."]
            return name
        if "/" in name:
            parts = name.split("/")
            if len(parts) != 2:  # MAAS crashes unpacking it
                raise _Error(500, "too many values to unpack (expected 2)")
            if parts[0] == "custom" and self.strips_custom:
                name = parts[1]
            elif parts[0] not in self.osystems:
                errors["name"] = [
                    f"Unsupport operating system {parts[0]}, supported operating "
                    f"systems: {self.osystems}"
                ]
                return name
        cache = {*self.boot_source_cache}
        cache |= {r.name for r in self._resources.values() if r.rtype == 0}
        reserved = {*cache, *(p for n in cache for p in n.split("/")), *self.osystems}
        if name in reserved or re.search(r"^centos\d\d?$", name):
            errors["name"] = [f"{name} is a reserved name"]
        return name

    def _clean_base_image(
        self, data: dict[str, str], name: str, errors: dict[str, list[str]]
    ) -> str:
        """clean_base_image: tests the name as sent, finds the resource by the cleaned one."""
        sent = data.get("name", "").split("/")
        if len(sent) > 1 and sent[0] != "custom":
            return ""
        base = data.get("base_image", "")
        if not base:
            existing = [
                r.base_image for r in self._resources.values()
                if (r.rtype, r.name, r.architecture) == (2, name, data.get("architecture"))
            ]  # fmt: skip
            base = existing[0] if existing else ""
        parts = base.split("/")
        if len(parts) != 2:
            if not data.get("base_image"):
                return self.commissioning
            errors["base_image"] = ["a base image must follow the format: <osystem>/<series>"]
            return ""
        os_, series = parts[0].lower(), parts[1].lower()
        if os_ not in LINUX_OSYSTEMS:
            errors["base_image"] = ["custom images require a valid non-custom OS type base image"]
        elif os_ == "ubuntu" and series not in UBUNTU_SERIES:
            errors["base_image"] = ["please select a valid base image OS and version"]
        return f"{os_}/{series}"

    def put(self, rid: int, fid: int, length: int, data: bytes) -> None:
        res = self.get(rid)
        files = [f for s in res.sets for f in s.files if f.id == fid]
        if not files:
            raise _Error(404, "No BootResourceFile matches the given query.")
        rfile = files[0]
        if length == 0:
            raise _Error(400, "Missing data.")
        if length != len(data):
            raise _Error(400, "Content-Length doesn't equal size of received data.")
        if res.rtype != 2:
            raise _Error(403, f"Cannot upload to a resource of type: {res.rtype}.")
        region = self.regions[0]
        held = self._file_bytes(rfile) if self.legacy else rfile.synced.get(region, 0)
        if held == rfile.size:
            raise _Error(400, "Cannot upload to a complete file.")
        path = self.store / rfile.on_disk
        before = path.stat().st_size if path.exists() else 0
        if before + len(data) > rfile.size:
            if not self.legacy:
                path.unlink(missing_ok=True)
            raise _Error(400, "Too much data received.")
        with path.open("ab") as out:
            out.write(data)
        self.chunks.append(Chunk(rfile.id, before, len(data)))
        if before + len(data) == rfile.size:
            h = hashlib.sha256()
            with path.open("rb") as src:
                while block := src.read(4 << 20):
                    h.update(block)
            if h.hexdigest() != rfile.sha256:
                if self.legacy:  # the content lived in the database: rolled back
                    with path.open("r+b") as rw:
                        rw.truncate(before)
                raise _Error(400, "Saved content does not match given SHA256 value.")
            if not self.legacy:  # the sync workflow copies it to the other regions
                rfile.synced = dict.fromkeys(self.regions, rfile.size)
                return
        if not self.legacy:
            rfile.synced[region] = rfile.synced.get(region, 0) + len(data)


class _Handler(BaseHTTPRequestHandler):
    maas: FakeMAAS
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any, ctype: str = "application/json") -> None:
        if isinstance(body, (dict, list)):
            raw = json.dumps(body).encode()
        else:
            raw, ctype = str(body).encode(), "text/plain; charset=utf-8"
        self.send_response(status)
        if status == 401:
            self.send_header("WWW-Authenticate", 'OAuth realm="OAuth"')
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _handle(self) -> None:
        maas = self.maas
        url = urlsplit(self.path)
        clen = self.headers.get("Content-Length")
        length = int(clen) if clen and clen.isdigit() else 0
        rec = Request(self.command, url.path, 0, self.headers.get("Content-Type", ""),
                      int(clen) if clen and clen.isdigit() else None,
                      self.headers.get("Authorization", ""))  # fmt: skip
        with maas._lock:
            maas.requests.append(rec)
        upload = re.fullmatch(rf"{API}boot-resources/(\d+)/upload/(\d+)/", url.path)
        cut = maas.cut
        cutting = False
        if upload and self.command == "PUT" and cut is not None and not cut.fired:
            cutting = sum(c.length for c in maas.chunks) + length > cut.after_bytes
            cut.fired = cutting
            if cutting and cut.mode == "mid-body":
                maas.put_body_bytes += len(self.rfile.read(length // 2))
                self.close_connection = True
                rec.status = -1
                return
        body = self.rfile.read(length) if length else b""
        if self.command == "PUT":
            maas.put_body_bytes += len(body)
        try:
            with maas._lock:
                status, out = self._route(url.path, parse_qs(url.query), body, length)
        except _Error as e:
            status, out = e.status, e.body
        rec.status = status
        if cutting:  # "after-append": the chunk is in, the answer never leaves
            self.close_connection = True
            return
        self._send(status, out)

    def _route(
        self, path: str, query: dict[str, list[str]], body: bytes, length: int
    ) -> tuple[int, Any]:
        maas = self.maas
        if not path.startswith(API):
            raise _Error(404, "Not Found")
        rest = path[len(API):]  # fmt: skip
        if rest == "version/" and self.command == "GET":
            return 200, {"capabilities": [], "version": maas.version, "subversion": ""}
        maas.check_auth(self.headers.get("Authorization", ""))
        if self.command in ("POST", "PUT", "DELETE") and not maas.admin:
            raise _Error(403, FORBIDDEN_TEXT)
        if rest == "regioncontrollers/" and self.command == "GET":
            return 200, [{"system_id": r, "hostname": r} for r in maas.regions]
        if rest == "boot-resources/":
            if self.command == "GET":
                return 200, maas.list_resources(query)
            if self.command == "POST":
                res = maas.create(self._form(body))
                return 201, maas._to_dict(res, True)
        if m := re.fullmatch(r"boot-resources/(\d+)/", rest):
            if self.command == "GET":
                return 200, maas._to_dict(maas.get(int(m.group(1))), True)
            if self.command == "DELETE":
                maas.delete(int(m.group(1)))
                return 204, ""
        m = re.fullmatch(r"boot-resources/(\d+)/upload/(\d+)/", rest)
        if m and self.command == "PUT":
            maas.put(int(m.group(1)), int(m.group(2)), length, body)
            return 200, "OK"
        raise _Error(405, "Method Not Allowed")

    def _form(self, body: bytes) -> dict[str, str]:
        ctype = self.headers.get("Content-Type", "")
        if ctype.startswith("multipart/form-data"):
            msg = BytesParser(policy=HTTP).parsebytes(
                b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body
            )
            out = {}
            for part in msg.iter_parts():
                key = part.get_param("name", header="content-disposition")
                payload = part.get_payload(decode=True)
                if isinstance(key, str) and isinstance(payload, bytes):
                    out[key] = payload.decode()
            return out
        return {k: v[-1] for k, v in parse_qs(body.decode()).items()}

    do_GET = do_POST = do_PUT = do_DELETE = _handle
