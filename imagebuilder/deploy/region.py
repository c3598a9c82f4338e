"""The MAAS side of a deploy test: a loopback stand-in for the region and rack servers.

A real deploy needs a MAAS region (metadata, status events) and a rack (the image
file). Neither can run here, so :class:`Region` serves exactly what the deployed
machine asks of them, on 127.0.0.1 only, with the rules the real servers apply:

- the image, at the rack's path ``/images/custom/<arch>/<subarch>/<name>/uploaded/<file>``;
- cloud-init's MAAS datasource (``DataSourceMAAS.read_maas_seed_url``, metadata
  version ``2012-03-01``): ``meta-data/instance-id``, ``meta-data/local-hostname``,
  ``meta-data/public-keys``, ``user-data``; requests without the node's OAuth token
  get 401, as MAAS's metadata API answers an unsigned request for a node's data;
- status events (curtin's and cloud-init's ``webhook`` reporters POST JSON to
  ``/MAAS/metadata/status/<system_id>``), recorded in order: MAAS marks a machine
  Deployed when cloud-init's ``modules-final`` finish event has result SUCCESS, and
  so does :meth:`Region.deployed`;
- the ``op=netboot_off`` POST of MAAS's curtin late command.

It is a stand-in, not MAAS: it has no database, serves one node, and checks only
the token key of the OAuth header (the PLAINTEXT signature is the secret itself).
This module knows nothing about qemu or curtin.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

#: cloud-init's MAAS datasource metadata version (DataSourceMAAS.MD_VERSION).
MD_VERSION = "2012-03-01"
_TOKEN = re.compile(r'oauth_token="([^"]*)"')


@dataclass(frozen=True)
class Node:
    """The one machine this region knows."""

    system_id: str
    hostname: str
    token_key: str
    token_secret: str
    consumer_key: str
    public_keys: tuple[str, ...]
    user_data: bytes = b""


@dataclass
class Region:
    """What the node asked and told; filled by the server thread."""

    node: Node
    image: Path
    image_path: str  # the URL path the image is served at
    events: list[dict[str, Any]] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    netboot_off: bool = False
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, host: str) -> str:
        return f"http://{host}:{self.port}" if self.port != 80 else f"http://{host}"

    def deployed(self) -> bool | None:
        """True/False once cloud-init's modules-final finish event arrived, else None."""
        with self.lock:
            for ev in self.events:
                if (
                    ev.get("origin") == "cloudinit"
                    and ev.get("event_type") == "finish"
                    and ev.get("name") == "modules-final"
                ):
                    return ev.get("result") == "SUCCESS"
        return None

    def failures(self) -> list[dict[str, Any]]:
        """Finish events with a result other than SUCCESS, in order."""
        with self.lock:
            return [
                ev for ev in self.events
                if ev.get("event_type") == "finish" and ev.get("result") not in (None, "SUCCESS")
            ]  # fmt: skip

    def metadata(self, path: str) -> bytes | None:
        n = self.node
        files = {
            "meta-data/instance-id": n.system_id.encode(),
            "meta-data/local-hostname": n.hostname.encode(),
            "meta-data/public-keys": "\n".join(n.public_keys).encode(),
            "user-data": n.user_data,
        }
        return files.get(path)


class _Handler(BaseHTTPRequestHandler):
    region: Region
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        with self.region.lock:
            self.region.requests.append(f"{self.command} {self.path} {format % args}")

    def _send(self, code: int, body: bytes = b"", ctype: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorised(self) -> bool:
        found = _TOKEN.search(self.headers.get("Authorization", ""))
        return found is not None and found.group(1) == self.region.node.token_key

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == self.region.image_path:
            self._send_image()
            return
        prefix = f"/MAAS/metadata/{MD_VERSION}/"
        if path.startswith(prefix):
            if not self._authorised():
                self._send(401, b"Authorization required")
                return
            data = self.region.metadata(path[len(prefix) :])
            if data is None:
                self._send(404, b"Not found")
            else:
                self._send(200, data)
            return
        self._send(404, b"Not found")

    def _send_image(self) -> None:
        size = self.region.image.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command == "HEAD":
            return
        with contextlib.suppress(ConnectionError), open(self.region.image, "rb") as fh:
            shutil.copyfileobj(fh, self.wfile, 1 << 20)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        if not self._authorised():
            self._send(401, b"Authorization required")
            return
        if path == f"/MAAS/metadata/status/{self.region.node.system_id}":
            try:
                event = json.loads(body)
            except ValueError:
                self._send(400, b"Status payload must be JSON")
                return
            with self.region.lock:
                self.region.events.append(event if isinstance(event, dict) else {"raw": event})
            self._send(200, b"OK")
            return
        if path.rstrip("/") == f"/MAAS/metadata/{MD_VERSION}" and b"op=netboot_off" in body:
            with self.region.lock:
                self.region.netboot_off = True
            self._send(200, b"OK")
            return
        self._send(404, b"Not found")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # curtin and cloud-init post events in bursts


@contextlib.contextmanager
def serve(node: Node, image: Path, image_path: str) -> Iterator[Region]:
    """Run the stand-in on 127.0.0.1 (a free port) while the block runs."""
    region = Region(node=node, image=image, image_path=image_path)
    handler = type("Handler", (_Handler,), {"region": region})
    server = _Server(("127.0.0.1", 0), handler)
    region.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
    thread.daemon = True
    thread.start()
    try:
        yield region
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5.0)
