"""The loopback HTTP server behind ``--http-dir``: files for the customize script.

Serves one directory read-only on 127.0.0.1 (never on other interfaces) from a
background thread for as long as the context manager is open. The guest reaches
it at ``http://10.0.2.2:<port>/`` because qemu's user networking forwards
10.0.2.2 to the host's loopback. Requests go to a log callback, not the
terminal. This module knows nothing about the VM.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

#: The host as the guest sees it under qemu user networking.
GUEST_HOST_ADDRESS = "10.0.2.2"


class _Handler(SimpleHTTPRequestHandler):
    log: Callable[[str], None] = staticmethod(lambda line: None)

    def log_message(self, format: str, *args: Any) -> None:
        type(self).log(f"http: {self.address_string()} {format % args}")

    def do_PUT(self) -> None:  # read-only: no uploads (the default answer is 501 anyway)
        self.send_error(405)


@contextlib.contextmanager
def serve(directory: Path, *, log: Callable[[str], None] = lambda line: None) -> Iterator[int]:
    """Serve ``directory`` on 127.0.0.1; yields the port. Closed (port freed) on exit."""
    handler = type("Handler", (_Handler,), {"log": staticmethod(log)})
    factory = functools.partial(handler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), factory)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
    thread.daemon = True
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5.0)


def guest_url(port: int) -> str:
    return f"http://{GUEST_HOST_ADDRESS}:{port}/"
