"""HTTP client for MAAS's boot-resources API (the wire protocol, nothing more).

``MAASClient`` signs every request with OAuth 1.0 PLAINTEXT (oauthlib, through a
``requests`` auth hook), creates boot resources, uploads their content in chunks of
at most 4 MiB to the ``upload_uri`` MAAS returns, reads resources back, lists and
deletes them, and works out how many bytes of an incomplete file MAAS already holds.

What MAAS offers for resuming (read from its source, ``maasserver/api/boot_resources.py``):
a chunk ``PUT`` carries no offset; MAAS appends it to the file it keeps for that
sha256, so a client must send exactly the bytes MAAS lacks. The only thing that says
how many it holds is the file's ``progress`` while it is incomplete:
MAAS >= 3.5 reports ``100 * bytes / (size * region_controllers)``, MAAS < 3.5
(LargeFile) reports ``size / bytes``. ``server_bytes`` inverts the right one.

It must not: decide names, defaults or filetypes (``maas`` does), print, or let the
API key reach a log line, an exception text or a ``repr``. Server texts are never
relayed for 401 responses (an old OAuth library in MAAS puts the expected
signature, i.e. the real token secret, in them) and are redacted elsewhere.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from ..errors import ConfigError, MAASAuthError, MAASError
from ..progress import Progress
from .auth import AUTH_HINT, APIKey, PlaintextAuth

log = logging.getLogger(__name__)

#: The most a chunk PUT carries; what ``maas boot-resources create`` sends too.
CHUNK_SIZE = 4 * 1024 * 1024
#: Seconds to connect / to wait for an answer; the last chunk makes MAAS hash the file.
CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 120.0
PUT_READ_TIMEOUT = 900.0
#: What ``version()`` assumes when MAAS does not say: the sync-per-region storage (3.5+).
CURRENT_MAAS = (3, 5)


def api_root(maas_url: str) -> str:
    """``http://host:5240/MAAS`` (or ``.../MAAS/api/2.0``) -> ``.../MAAS/api/2.0/``."""
    url = maas_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"not a MAAS URL: {maas_url!r}",
            hint="give the URL `maas login` uses, e.g. http://maas.example:5240/MAAS",
        )
    if not url.endswith("/api/2.0"):
        url += "/api/2.0"
    return url + "/"


def _reason(exc: BaseException) -> str:
    """A short cause for a connection failure ('connection refused', 'timed out')."""
    if isinstance(exc, requests.Timeout):
        return "timed out"
    m = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    if m:
        return m.group(1).strip().rstrip(".").lower()
    if "RemoteDisconnected" in str(exc) or "Connection aborted" in str(exc):
        return "the connection was closed by the server"
    return type(exc).__name__


def _auth_reason(body: str) -> str:
    """Why MAAS said 401, from its known texts only (the raw body may hold a secret)."""
    known = (
        ("Invalid API key", "MAAS does not know its consumer key"),
        ("Invalid consumer", "MAAS does not know its consumer key"),
        ("Invalid access token", "MAAS does not know its token (deleted or never created)"),
        ("Invalid signature", "its token secret is wrong"),
        ("Expired timestamp", "this host's clock is more than 5 minutes behind MAAS's"),
        ("Nonce already used", "MAAS saw a replayed request"),
    )
    for needle, reason in known:
        if needle in body:
            return reason
    return "authorization failed"


class MAASHTTPError(MAASError):
    """MAAS answered with an unexpected status; ``text`` is its body, redacted."""

    def __init__(self, message: str, *, status: int, text: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.text = text


class MAASConnectionError(MAASError):
    """MAAS could not be reached, or the connection broke."""


class MAASClient:
    """One MAAS, one API key. Every method raises ``MAASError`` (or ``MAASAuthError``)."""

    def __init__(self, url: str, api_key: str, *, session: requests.Session | None = None) -> None:
        self.url = url.strip().rstrip("/")
        self.root = api_root(url)
        self._key = APIKey.parse(api_key)
        self._auth = PlaintextAuth(self._key)
        self._own_session = session is None
        self.session = session or requests.Session()
        self._version: tuple[int, ...] | None = None

    def __repr__(self) -> str:
        return f"MAASClient({self.url!r}, ****)"

    def close(self) -> None:
        if self._own_session:
            self.session.close()

    def __enter__(self) -> MAASClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- plumbing --------------------------------------------------------------
    def _redact(self, text: str) -> str:
        for secret in self._key.secrets():
            text = text.replace(secret, "****")
        return text

    def _request(
        self,
        method: str,
        path: str,
        *,
        ok: tuple[int, ...] = (200,),
        signed: bool = True,
        timeout: float = READ_TIMEOUT,
        **kwargs: Any,
    ) -> requests.Response:
        url = urljoin(self.root, path)
        try:
            resp = self.session.request(
                method,
                url,
                auth=self._auth if signed else None,
                timeout=(CONNECT_TIMEOUT, timeout),
                allow_redirects=False,
                **kwargs,
            )
        except requests.RequestException as exc:
            # ``from None``: requests' exceptions carry the signed request object.
            raise MAASConnectionError(
                f"cannot talk to MAAS at {self.url}: {_reason(exc)}",
                hint="check --maas-url (e.g. http://maas.example:5240/MAAS) and that MAAS runs",
            ) from None
        log.debug("%s %s -> %d", method, url, resp.status_code)
        if resp.status_code in ok:
            return resp
        body = resp.text.strip()
        if resp.status_code == 401:
            raise MAASAuthError(f"MAAS rejected the API key: {_auth_reason(body)}", hint=AUTH_HINT)
        if resp.status_code == 403:
            raise MAASAuthError(
                "MAAS rejected the API key for this operation: "
                f"{self._redact(body)[:300] or 'forbidden'}",
                hint="boot resources can only be changed with a MAAS administrator's API key",
            )
        text = self._redact(body)
        if 300 <= resp.status_code < 400:
            raise MAASHTTPError(
                f"MAAS at {self.url} redirects to {resp.headers.get('Location', '?')}",
                status=resp.status_code,
                text=text,
                hint="give --maas-url as the address it redirects to",
            )
        raise MAASHTTPError(
            f"MAAS answered {resp.status_code} to {method} {urlsplit(url).path}: "
            f"{text[:500] or resp.reason}",
            status=resp.status_code,
            text=text,
        )

    def _json(self, resp: requests.Response) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise MAASError(
                f"MAAS at {self.url} sent something that is not JSON "
                f"({resp.headers.get('Content-Type', 'no content type')})",
                hint="is --maas-url the MAAS region URL (http://HOST:5240/MAAS)?",
            ) from None

    # ---- reading ---------------------------------------------------------------
    def version(self) -> tuple[int, ...]:
        """MAAS's version as numbers, e.g. (3, 6, 0); anonymous ``GET version/``."""
        if self._version is None:
            try:
                data = self._json(self._request("GET", "version/", signed=False))
                text = str(data.get("version") if isinstance(data, dict) else "")
            except (MAASHTTPError, MAASAuthError) as exc:
                log.debug("no MAAS version (%s); assuming a current MAAS", exc.message)
                text = ""
            nums = re.findall(r"\d+", text.split("~")[0].split("-")[0])[:3]
            self._version = tuple(int(n) for n in nums) or CURRENT_MAAS
        return self._version

    def region_count(self) -> int:
        """Region controllers (MAAS >= 3.5 divides ``progress`` by their number)."""
        try:
            regions = self._json(self._request("GET", "regioncontrollers/"))
        except (MAASHTTPError, MAASAuthError) as exc:
            log.debug("cannot list region controllers (%s); assuming one", exc.message)
            return 1
        return max(1, len(regions)) if isinstance(regions, list) else 1

    def list_resources(self, type: str = "uploaded") -> list[dict[str, Any]]:
        resp = self._request("GET", "boot-resources/", params={"type": type} if type else None)
        data = self._json(resp)
        if not isinstance(data, list):
            raise MAASError(f"MAAS sent an unexpected boot-resources list from {self.url}")
        return data

    def get(self, id: int) -> dict[str, Any]:
        data = self._json(self._request("GET", f"boot-resources/{int(id)}/"))
        if not isinstance(data, dict):
            raise MAASError(f"MAAS sent an unexpected boot resource {id} from {self.url}")
        return data

    # ---- writing ---------------------------------------------------------------
    def delete(self, id: int) -> None:
        self._request("DELETE", f"boot-resources/{int(id)}/", ok=(200, 204))

    def create_resource(
        self,
        *,
        name: str,
        architecture: str,
        sha256: str,
        size: int,
        filetype: str,
        title: str | None = None,
        base_image: str | None = None,
        keep_old: bool = False,
    ) -> dict[str, Any]:
        """``POST boot-resources/`` (multipart, like the maas CLI); the 201 resource."""
        fields: dict[str, str] = {
            "name": name,
            "architecture": architecture,
            "sha256": sha256,
            "size": str(size),
            "filetype": filetype,
        }
        if title:
            fields["title"] = title
        if base_image:
            fields["base_image"] = base_image
        if keep_old:
            fields["keep_old"] = "true"
        files = {k: (None, v) for k, v in sorted(fields.items())}
        try:
            resp = self._request("POST", "boot-resources/", ok=(201,), files=files)
        except MAASHTTPError as exc:
            raise self._explain_create_error(exc, architecture) from None
        data = self._json(resp)
        if not isinstance(data, dict):
            raise MAASError(f"MAAS sent an unexpected answer to creating {name}")
        return data

    def _explain_create_error(self, exc: MAASHTTPError, architecture: str) -> MAASError:
        if exc.status != 400:
            return exc
        try:
            errors = json.loads(exc.text)
        except ValueError:
            errors = None
        if not isinstance(errors, Mapping):
            return MAASError(f"MAAS refused the image: {exc.text[:500]}")
        if "architecture" in errors:
            offered = re.findall(r"'([^']+)'", str(errors["architecture"]))[1:]
            return MAASError(
                f"MAAS has no architecture {architecture}: it offers "
                f"{', '.join(offered) or 'none'}",
                hint=f"MAAS must have synced boot images for {architecture.split('/')[0]} "
                "(Images page, or `maas admin boot-resources import`) before it takes "
                "a custom image for it; or pass --architecture",
            )
        detail = "; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in errors.items())
        if "reserved name" in str(errors.get("name")):
            return MAASError(
                f"MAAS refused the image: {detail}",
                hint="MAAS reserves the OS and release names of its image streams "
                "(custom/ is removed before the check up to MAAS 3.7): pick another NAME",
            )
        return MAASError(f"MAAS refused the image: {detail}")

    def server_bytes(self, rfile: Mapping[str, Any]) -> int:
        """How many bytes of this (incomplete) file MAAS already holds."""
        size = int(rfile["size"])
        if rfile.get("complete"):
            return size
        progress = float(rfile.get("progress") or 0.0)
        if progress <= 0:
            return 0
        if self.version() >= (3, 5):
            held = progress * size * self.region_count() / 100.0
        else:  # LargeFile.progress was total_size / size
            held = size / progress
        got = round(held)
        if abs(held - got) > 0.01 or not 0 <= got <= size:
            raise MAASError(
                f"cannot tell how much of {rfile.get('filename', 'the file')} MAAS holds "
                f"(progress {progress})",
                hint="delete the incomplete image (imagebuilder maas delete NAME) and upload again",
            )
        return got

    def upload_file(
        self, upload_uri: str, path: Path, progress: Progress, *, offset: int = 0
    ) -> int:
        """PUT ``path`` from ``offset`` to the end in signed chunks; returns bytes sent."""
        size = path.stat().st_size
        done = offset
        started = time.monotonic()
        progress.counter("upload", done, size)
        with path.open("rb") as f:
            f.seek(offset)
            while done < size:
                chunk = f.read(min(CHUNK_SIZE, size - done))
                if not chunk:
                    raise MAASError(f"{path} shrank while it was being uploaded")
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(len(chunk)),
                }
                try:
                    self._request(
                        "PUT", upload_uri, data=chunk, headers=headers, timeout=PUT_READ_TIMEOUT
                    )
                except MAASError as exc:
                    raise self._explain_put_error(exc, done, size) from None
                done += len(chunk)
                progress.counter("upload", done, size)
        sent = done - offset
        seconds = max(time.monotonic() - started, 1e-6)
        log.debug("uploaded %d bytes in %.2f s (%.1f MiB/s)", sent, seconds, sent / seconds / 2**20)
        return sent

    def _explain_put_error(self, exc: MAASError, done: int, size: int) -> MAASError:
        if isinstance(exc, MAASConnectionError):
            return MAASError(
                f"upload interrupted after {done} of {size} bytes ({exc.message})",
                hint="run the same command again: it resumes where MAAS stopped",
            )
        if not isinstance(exc, MAASHTTPError):
            return exc
        if "does not match given SHA256" in exc.text or "Too much data received" in exc.text:
            return MAASError(
                f"MAAS: {exc.text}",
                hint="the image changed while uploading, or MAAS holds a damaged partial copy: "
                "delete it (imagebuilder maas delete NAME) and upload again",
            )
        return MAASError(
            f"MAAS refused a chunk at byte {done} of {size}: {exc.text[:500]}", hint=exc.hint
        )
