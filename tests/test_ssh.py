"""ssh.Guest against a throw-away local paramiko server: pinning, readiness, streaming.

The server is real SSH (paramiko's server side, ed25519 host key, public-key auth)
running commands with ``sh -c`` on this host, as sshd would in the guest.
"""

from __future__ import annotations

import io
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)

from imagebuilder.errors import SSHError
from imagebuilder.vm.keys import BuildKeys
from imagebuilder.vm.ssh import BuildLog, Disconnected, Guest, command_line


class _Server(paramiko.ServerInterface):
    def __init__(self, owner: FakeSSHD) -> None:
        self.owner = owner

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if username == self.owner.user and key.get_base64() == self.owner.allowed:
            self.owner.logins += 1
            return AUTH_SUCCESSFUL
        return AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return OPEN_SUCCEEDED if kind == "session" else OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        threading.Thread(
            target=self.owner.execute, args=(channel, command.decode()), daemon=True
        ).start()
        return True


class FakeSSHD:
    """sshd stand-in on 127.0.0.1: accepts ``user`` with one key, presents ``host_key``."""

    def __init__(self, host_key: str, allowed: str, user: str = "imagebuilder-build") -> None:
        self.host_key = paramiko.Ed25519Key.from_private_key(io.StringIO(host_key))
        self.allowed, self.user = allowed, user
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.transports: list[paramiko.Transport] = []
        self.logins = 0
        self._stop = False

    def start(self, delay: float = 0.0) -> None:
        def serve() -> None:
            time.sleep(delay)
            self.sock.listen(5)
            self.sock.settimeout(0.2)
            while not self._stop:
                try:
                    conn, _ = self.sock.accept()
                except (TimeoutError, OSError):
                    continue
                t = paramiko.Transport(conn)
                t.add_server_key(self.host_key)
                self.transports.append(t)
                try:
                    t.start_server(server=_Server(self))
                except (paramiko.SSHException, EOFError, OSError):  # client gave up
                    continue

        threading.Thread(target=serve, daemon=True).start()

    def execute(self, chan: paramiko.Channel, command: str) -> None:
        if command == "sh -c 'drop the connection'":
            time.sleep(0.2)
            chan.get_transport().close()
            return
        proc = subprocess.Popen(
            ["sh", "-c", command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert proc.stdin is not None and proc.stdout is not None
        data = b""
        while not chan.eof_received:
            if chan.recv_ready():
                data += chan.recv(65536)
            else:
                time.sleep(0.01)
        while chan.recv_ready():
            data += chan.recv(65536)
        proc.stdin.write(data)
        proc.stdin.close()
        for line in proc.stdout:
            chan.sendall(line)
        chan.send_exit_status(proc.wait())
        chan.shutdown_write()
        chan.close()

    def stop(self) -> None:
        self._stop = True
        for t in self.transports:
            t.close()
        self.sock.close()


@pytest.fixture
def keys() -> BuildKeys:
    return BuildKeys.generate("ssh-test")


@pytest.fixture
def log(tmp_path: Path) -> Iterator[BuildLog]:
    blog = BuildLog(tmp_path / "build.log")
    yield blog
    blog.close()


@pytest.fixture
def sshd(keys: BuildKeys) -> Iterator[FakeSSHD]:
    server = FakeSSHD(keys.host.private_openssh, keys.client.public_openssh.split()[1])
    yield server
    server.stop()


def _guest(server: FakeSSHD, keys: BuildKeys, log: BuildLog) -> Guest:
    return Guest(host="127.0.0.1", port=server.port, user=server.user, keys=keys, log=log)


def test_command_line_quoting() -> None:
    assert command_line("echo 'a b'", sudo=False) == "sh -c 'echo '\"'\"'a b'\"'\"''"
    assert command_line(["apt-get", "update"], sudo=True, env={"B": "2", "A": "x y"}) == (
        "sudo -n -H -- env 'A=x y' B=2 apt-get update"
    )


def test_ready_soon_after_sshd_starts(sshd: FakeSSHD, keys: BuildKeys, log: BuildLog) -> None:
    sshd.start(delay=1.5)
    guest = _guest(sshd, keys, log)
    took = guest.wait_ready(timeout=20)
    assert 1.5 <= took < 2.1, took  # polled, not slept in big steps
    guest.close()


def test_run_streams_output_and_returns_status(
    sshd: FakeSSHD, keys: BuildKeys, log: BuildLog, tmp_path: Path
) -> None:
    sshd.start()
    guest = _guest(sshd, keys, log)
    guest.wait_ready(timeout=10)
    result = guest.run(
        "for i in $(seq 1 40); do echo line $i; done; echo oops >&2; exit 3", sudo=False
    )
    assert result.status == 3
    assert len(result.tail) == 30 and result.tail[-1] == "oops" and result.tail[0] == "line 12"
    text = (tmp_path / "build.log").read_text()
    assert "| line 1\n" in text and "| oops" in text and "exit status 3" in text
    with pytest.raises(SSHError, match="exit 1") as err:
        guest.check("echo bad; false", sudo=False)
    assert "bad" in err.value.details
    guest.close()


def test_put_and_input(sshd: FakeSSHD, keys: BuildKeys, log: BuildLog, tmp_path: Path) -> None:
    sshd.start()
    guest = _guest(sshd, keys, log)
    guest.wait_ready(timeout=10)
    target = tmp_path / "uploaded"
    guest.put(b"#!/bin/sh\necho hi\n", str(target), mode=0o755)
    assert target.read_bytes() == b"#!/bin/sh\necho hi\n"
    assert target.stat().st_mode & 0o777 == 0o755
    assert guest.run(["sh", "-s"], sudo=False, input=b"echo from stdin\n").tail == ("from stdin",)
    guest.close()


def test_other_host_key_is_rejected(keys: BuildKeys, log: BuildLog) -> None:
    impostor = BuildKeys.generate("impostor")
    server = FakeSSHD(impostor.host.private_openssh, keys.client.public_openssh.split()[1])
    server.start()
    try:
        guest = _guest(server, keys, log)
        with pytest.raises(SSHError, match="different host key"):
            guest.wait_ready(timeout=1.5)
        assert server.logins == 0
    finally:
        server.stop()


def test_wrong_client_key_is_refused(keys: BuildKeys, log: BuildLog) -> None:
    other = BuildKeys.generate("other")
    server = FakeSSHD(keys.host.private_openssh, other.client.public_openssh.split()[1])
    server.start()
    try:
        with pytest.raises(SSHError, match="refused our key"):
            _guest(server, keys, log).wait_ready(timeout=1.5)
    finally:
        server.stop()


def test_dead_vm_stops_the_wait(keys: BuildKeys, log: BuildLog) -> None:
    def gone() -> None:
        raise SSHError("qemu exited")

    guest = Guest(host="127.0.0.1", port=9, user="u", keys=keys, log=log, alive=gone)
    start = time.monotonic()
    with pytest.raises(SSHError, match="qemu exited"):
        guest.wait_ready(timeout=30)
    assert time.monotonic() - start < 1


def test_dropped_connection_is_reported(sshd: FakeSSHD, keys: BuildKeys, log: BuildLog) -> None:
    sshd.start()
    guest = _guest(sshd, keys, log)
    guest.wait_ready(timeout=10)
    with pytest.raises(Disconnected):
        guest.run("drop the connection", sudo=False)
    guest.close()
