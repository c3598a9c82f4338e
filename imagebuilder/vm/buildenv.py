"""The build's environment: proxies as the guest reaches them, and no prompts.

Every root command of the build runs with :func:`build_env`: the release family's
no-prompt settings, the build proxies rewritten so the guest reaches a proxy on the
host's loopback through qemu's gateway, and ``SOURCE_DATE_EPOCH``. Pure values.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from ..config.tree import Config
from . import httpserve

LOOPBACK = ("localhost", "127.0.0.1", "::1")


def guest_proxy(url: str) -> str:
    """The proxy URL as the guest must use it: host loopback becomes 10.0.2.2."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.hostname in LOOPBACK:
        netloc = httpserve.GUEST_HOST_ADDRESS + (f":{parts.port}" if parts.port else "")
        if parts.username:
            cred = parts.username + (f":{parts.password}" if parts.password else "")
            netloc = f"{cred}@{netloc}"
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


def build_env(cfg: Config, epoch: int | None = None) -> dict[str, str]:
    """The environment of every root command in the build: no prompts, the build proxies,
    and ``SOURCE_DATE_EPOCH`` (the outputs' epoch) for the tools that honour it
    (initramfs-tools, python's byte-compiler, mtools...), so what they write is the same
    in every build."""
    env = {**cfg.release.family.packages.env, **proxy_env(cfg)}
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(epoch)
    return env


def proxy_env(cfg: Config) -> dict[str, str]:
    p = cfg.provision
    env: dict[str, str] = {}
    for name, value in (("http_proxy", p.http_proxy), ("https_proxy", p.https_proxy)):
        if value:
            env[name] = env[name.upper()] = guest_proxy(value)
    if env:
        hosts = [h for h in (p.no_proxy or "").split(",") if h.strip()]
        hosts += [
            h for h in ("localhost", "127.0.0.1", httpserve.GUEST_HOST_ADDRESS) if h not in hosts
        ]
        env["no_proxy"] = env["NO_PROXY"] = ",".join(hosts)
    return env
