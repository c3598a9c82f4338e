"""MAAS API keys and the OAuth 1.0 PLAINTEXT signature every API request carries.

An API key is ``consumer_key:token_key:token_secret``; :class:`APIKey` parses it and
never shows the secret (``repr``, :meth:`APIKey.secrets` lists what must be redacted).
:class:`PlaintextAuth` is a ``requests`` auth hook that signs each request afresh
(nonce, timestamp) with oauthlib, empty consumer secret, as MAAS expects.
:func:`read_api_key` finds the key (``--api-key-file``, ``MAAS_API_KEY``, a prompt).
This module holds no HTTP logic (:mod:`imagebuilder.maas.api` does) and never logs.
"""

from __future__ import annotations

import getpass
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests
from oauthlib.oauth1 import SIGNATURE_PLAINTEXT
from oauthlib.oauth1 import Client as OAuthClient

from ..errors import ConfigError

__all__ = ["AUTH_HINT", "APIKey", "PlaintextAuth", "getpass_prompt", "read_api_key"]

_KEY_PART = re.compile(r"[A-Za-z0-9._~+/=-]+")
AUTH_HINT = (
    "check MAAS_API_KEY or --api-key-file: it must be an API key of a MAAS administrator "
    "(`maas apikey --username USER` on the region, or the MAAS UI: your user > API keys)"
)


@dataclass(frozen=True)
class APIKey:
    """A MAAS API key, ``consumer_key:token_key:token_secret``; never shown in full."""

    consumer_key: str
    token_key: str
    token_secret: str = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> APIKey:
        parts = text.strip().split(":")
        if len(parts) != 3 or not all(_KEY_PART.fullmatch(p) for p in parts):
            raise ConfigError(
                f"the MAAS API key is malformed: expected consumer_key:token_key:token_secret "
                f"(3 parts without spaces), got {len(parts)} part(s)",
                hint=AUTH_HINT,
            )
        return cls(*parts)

    def __repr__(self) -> str:
        return "APIKey(****)"

    def secrets(self) -> tuple[str, ...]:
        """Texts that must never leave this process in a message."""
        full = f"{self.consumer_key}:{self.token_key}:{self.token_secret}"
        return (full, self.token_secret, f"{self.token_key}:{self.token_secret}")


class PlaintextAuth(requests.auth.AuthBase):
    """requests auth hook: a fresh OAuth 1.0 PLAINTEXT header (nonce, timestamp) per request."""

    def __init__(self, key: APIKey) -> None:
        self._key = key

    def __repr__(self) -> str:
        return "<OAuth PLAINTEXT ****>"

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        client = OAuthClient(
            self._key.consumer_key,
            client_secret="",
            resource_owner_key=self._key.token_key,
            resource_owner_secret=self._key.token_secret,
            signature_method=SIGNATURE_PLAINTEXT,
        )
        # PLAINTEXT signs no request content, so the body is left out of signing.
        _, headers, _ = client.sign(r.url or "", http_method=r.method or "GET")
        r.headers["Authorization"] = headers["Authorization"]
        return r


def read_api_key(
    api_key_file: Path | None,
    *,
    environ: Mapping[str, str],
    prompt: Callable[[], str] | None,
) -> str:
    """The API key from ``--api-key-file`` (explicit wins), ``MAAS_API_KEY``, or ``prompt``."""
    if api_key_file is not None:
        try:
            text = Path(api_key_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read the API key file {api_key_file}: {exc.strerror or exc}",
                hint="give a file holding consumer_key:token_key:token_secret",
            ) from None
        source = f"the API key file {api_key_file}"
    elif environ.get("MAAS_API_KEY", "").strip():
        text, source = environ["MAAS_API_KEY"], "MAAS_API_KEY"
    elif prompt is not None:
        text, source = prompt(), "the prompt"
    else:
        raise ConfigError(
            "no MAAS API key",
            hint="set MAAS_API_KEY, pass --api-key-file FILE, or run in a terminal to be asked",
        )
    try:
        APIKey.parse(text)
    except ConfigError as exc:
        raise ConfigError(f"{exc.message} (from {source})", hint=exc.hint) from None
    return text.strip()


def getpass_prompt() -> str:
    """Ask for the key without echo (for the CLI's ``prompt=`` when stdin is a terminal)."""
    if not sys.stdin.isatty():
        raise ConfigError(
            "no MAAS API key and no terminal to ask for one",
            hint="set MAAS_API_KEY or pass --api-key-file FILE",
        )
    return getpass.getpass("MAAS API key: ")
