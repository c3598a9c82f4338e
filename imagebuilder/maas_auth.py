"""MAAS API keys and the OAuth 1.0 PLAINTEXT signature every API request carries.

An API key is ``consumer_key:token_key:token_secret``; :class:`APIKey` parses it and
never shows the secret (``repr``, :meth:`APIKey.secrets` lists what must be redacted).
:class:`PlaintextAuth` is a ``requests`` auth hook that signs each request afresh
(nonce, timestamp) with oauthlib, empty consumer secret, as MAAS expects. This module
holds no HTTP logic (:mod:`imagebuilder.maas_api` does) and never logs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import requests
from oauthlib.oauth1 import SIGNATURE_PLAINTEXT
from oauthlib.oauth1 import Client as OAuthClient

from .errors import ConfigError

__all__ = ["AUTH_HINT", "APIKey", "PlaintextAuth"]

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
