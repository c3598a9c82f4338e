"""Mirrors that refuse, reset or are busy: the bounded retries of ``imagebuilder.sources.download``.

Real HTTP against the fake mirror with faults injected per path
(:func:`tests.fakes.debmirror.faults`); only the backoff's sleep is replaced, by a
list that records each wait, so these tests take no time.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import socket
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from imagebuilder.config.tree import resolve
from imagebuilder.errors import DownloadError
from imagebuilder.progress import Progress
from imagebuilder.sources import download
from imagebuilder.sources.images import fetch_base_image
from tests.fakes.cloudimages import CloudImages, GpgKeys
from tests.fakes.debmirror import Fault, faults


@pytest.fixture
def naps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits of the retry backoff, recorded instead of slept."""
    waits: list[float] = []
    monkeypatch.setattr(download, "RETRY", dataclasses.replace(download.RETRY, sleep=waits.append))
    return waits


def failing(exc: Exception) -> tuple[list[int], Callable[[], None]]:
    calls: list[int] = []

    def call() -> None:
        calls.append(1)
        raise exc

    return calls, call


# ---- the policy ----------------------------------------------------------------------


def test_a_persistent_failure_is_tried_four_times_with_a_doubling_wait(naps: list[float]) -> None:
    calls, call = failing(requests.ConnectionError("Connection refused"))
    with pytest.raises(DownloadError, match=r"^cannot reach m\.example: Connection refused"):
        download.with_retries("http://m.example/x", call)
    assert len(calls) == 4 and naps == [0.25, 0.5, 1.0]


def test_the_wait_is_capped_and_the_time_bounded() -> None:
    waits: list[float] = []
    calls, call = failing(requests.Timeout("read timed out"))
    long = download.Retry(attempts=6, sleep=waits.append)
    with pytest.raises(DownloadError, match="timed out"):
        download.with_retries("http://m.example/x", call, retry=long)
    assert waits == [0.25, 0.5, 1.0, 2.0, 2.0]
    calls.clear()
    spent = download.Retry(budget=0.0, sleep=waits.append)
    with pytest.raises(DownloadError):
        download.with_retries("http://m.example/x", call, retry=spent)
    assert len(calls) == 1  # the budget was spent before a second try could start


def test_tls_failures_and_other_errors_are_not_retried(naps: list[float]) -> None:
    calls, call = failing(requests.exceptions.SSLError("certificate verify failed"))
    with pytest.raises(DownloadError, match=r"TLS failed with m\.example"):
        download.with_retries("https://m.example/x", call)
    calls2, call2 = failing(ValueError("a bug, not the network"))
    with pytest.raises(ValueError):
        download.with_retries("https://m.example/x", call2)
    assert len(calls) == len(calls2) == 1 and naps == []


# ---- against the fake mirror --------------------------------------------------------------


@pytest.mark.parametrize("fault", ["refuse", "reset", "busy"])
def test_a_small_file_comes_through_a_first_failed_try(
    server: CloudImages, naps: list[float], fault: Fault
) -> None:
    server.put("/d/SUMS", b"abc *x\n")
    faults(server).add("/d/SUMS", fault)
    with download.session() as s:
        got = download.get_small(s, f"{server.url}/d/SUMS", missing_ok=False)
    assert got is not None and got[0] == b"abc *x\n"
    assert [h.status for h in server.requests_for("/d/SUMS")] == [
        503 if fault == "busy" else 0,
        200,
    ]
    assert naps == [0.25]


def test_a_404_is_asked_for_once(server: CloudImages, naps: list[float]) -> None:
    with download.session() as s:
        assert download.get_small(s, f"{server.url}/d/gone", missing_ok=True) is None
        with pytest.raises(DownloadError, match="HTTP 404"):
            download.get_small(s, f"{server.url}/d/gone", missing_ok=False)
        resp = download.request(s, "HEAD", f"{server.url}/d/gone")
    assert resp.status_code == 404
    assert server.count("/d/gone") == 3 and naps == []


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("refuse", r"cannot reach 127\.0\.0\.1:\d+: Remote end closed connection without response"),
        ("busy", "HTTP 503 Service Unavailable"),
    ],
)
def test_a_mirror_failing_every_try_is_one_error_after_four(
    server: CloudImages, naps: list[float], fault: Fault, message: str
) -> None:
    faults(server).add("/d/SUMS", fault, times=10)
    with download.session() as s, pytest.raises(DownloadError, match=message) as err:
        download.get_small(s, f"{server.url}/d/SUMS", missing_ok=False)
    assert "\n" not in str(err.value) and str(err.value).endswith(
        "/d/SUMS)" if fault == "refuse" else ""
    )
    assert server.count("/d/SUMS") == 4 and naps == [0.25, 0.5, 1.0]


def test_nothing_listening_is_cannot_reach_after_the_retries(naps: list[float]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: connections are refused
    with download.session() as s, pytest.raises(DownloadError) as err:
        download.get_small(s, f"http://127.0.0.1:{port}/SUMS", missing_ok=True)
    assert str(err.value).startswith(f"cannot reach 127.0.0.1:{port}: ")
    assert naps == [0.25, 0.5, 1.0]


def test_an_image_download_goes_through_refused_busy_and_reset_tries(
    server: CloudImages, keys: GpgKeys, tmp_path: Path, progress: Progress, naps: list[float]
) -> None:
    img = server.ubuntu("jammy")
    folder = img.folder
    faults(server).add(f"{folder}/SHA256SUMS", "refuse")
    faults(server).add(f"{folder}/SHA256SUMS.gpg", "busy")
    faults(server).add(img.path, "reset")
    cfg = resolve(
        {
            "series": "jammy",
            "mirror": server.url,
            "cache_dir": str(tmp_path / "c"),
            "keyring": str(keys.keyring),
        },
        environ={},
    )
    disk = fetch_base_image(cfg, progress)
    assert disk.path.read_bytes() == img.data
    for path in (f"{folder}/SHA256SUMS", f"{folder}/SHA256SUMS.gpg", img.path):
        assert server.count(path) == 2, path
    assert naps == [0.25, 0.25, 0.25]


def test_the_fake_mirror_answers_many_parallel_requests_without_dropping_one(
    server: CloudImages, naps: list[float]
) -> None:
    httpd = server._httpd
    assert isinstance(httpd, ThreadingHTTPServer) and httpd.daemon_threads
    assert httpd.request_queue_size >= 64  # socketserver's 5 refuses a burst of connects
    server.put("/d/f", b"x")

    def one(_: int) -> bytes:
        with download.session() as s:
            got = download.get_small(s, f"{server.url}/d/f", missing_ok=False)
        assert got is not None
        return got[0]

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        assert list(pool.map(one, range(64))) == [b"x"] * 64
    assert naps == [] and server.count("/d/f") == 64  # not one needed a second try
