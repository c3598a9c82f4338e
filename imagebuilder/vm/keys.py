"""Per-build SSH keys: the client key we log in with and the host key the guest presents.

Both are fresh ed25519 keys made for one build with the ``cryptography`` package
(paramiko's own dependency) and serialised the way OpenSSH writes them. The guest
gets the client's public key and the host's private key through the seed ISO;
``ssh`` pins the host's public key, so nothing is trusted on first use. Keys live
in memory; :meth:`BuildKeys.write_client_files` writes copies for a human's
``ssh`` command (``imagebuilder shell``). This module does no networking.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@dataclass(frozen=True)
class KeyPair:
    """An ed25519 key pair in OpenSSH formats."""

    private_openssh: str  # "-----BEGIN OPENSSH PRIVATE KEY-----" ... (no passphrase)
    public_openssh: str  # "ssh-ed25519 AAAA... comment"

    @property
    def public_blob(self) -> bytes:
        """The wire-format public key (the base64 field of ``public_openssh``)."""
        return base64.b64decode(self.public_openssh.split()[1])

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` as ``ssh-keygen -l`` prints it."""
        digest = hashlib.sha256(self.public_blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def generate_ed25519(comment: str) -> KeyPair:
    """A new ed25519 key pair; ``comment`` ends the public key line."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode("ascii")
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode("ascii")
    )
    return KeyPair(private_openssh=private, public_openssh=f"{public} {comment}")


@dataclass(frozen=True)
class BuildKeys:
    """The two key pairs of one build."""

    client: KeyPair  # we authenticate with it; its public half goes to the build user
    host: KeyPair  # the guest's sshd presents it; we accept no other

    @classmethod
    def generate(cls, build_id: str) -> BuildKeys:
        return cls(
            client=generate_ed25519(f"imagebuilder-build@{build_id}"),
            host=generate_ed25519(f"imagebuilder-host@{build_id}"),
        )

    def write_client_files(self, directory: Path, host: str, port: int) -> tuple[Path, Path]:
        """Write ``id_ed25519`` (mode 0600) and ``known_hosts`` for an OpenSSH client.

        Returns (identity file, known_hosts file).
        """
        identity = directory / "id_ed25519"
        fd = os.open(identity, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.client.private_openssh)
        known = directory / "known_hosts"
        name = host if port == 22 else f"[{host}]:{port}"
        key_type, key_b64 = self.host.public_openssh.split()[:2]
        known.write_text(f"{name} {key_type} {key_b64}\n")
        return identity, known
