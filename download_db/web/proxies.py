"""The proxies and CA bundle the environment sets, as curl and pip honour them, read once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

import requests


class EnvSession(requests.Session):
    """requests' trust_env, read once: with it on, requests re-reads the proxy variables
    and ~/.netrc on every request (measured: 2-3 % of a keep-original download's CPU).
    Here the environment's proxies are looked up once per scheme and host:port (no_proxy
    included) and the CA bundle once; ~/.netrc is not read, as curl does not by default,
    so no stored password is sent to a publisher."""

    def __init__(self, use_env: bool) -> None:
        super().__init__()
        self.trust_env = False
        self._use_env = use_env
        self._env_proxies: dict[tuple[str, str], dict[str, str]] = {}
        if use_env:
            self.verify = (os.environ.get("REQUESTS_CA_BUNDLE")
                           or os.environ.get("CURL_CA_BUNDLE") or True)

    def _proxies_for(self, url: str) -> dict[str, str]:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc.lower())
        found = self._env_proxies.get(key)
        if found is None:
            found = self._env_proxies[key] = requests.utils.get_environ_proxies(url)
        return found

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # type: ignore[override]
        if self._use_env and not proxies:
            proxies = self._proxies_for(url)
        return super().merge_environment_settings(url, proxies, stream, verify, cert)

    def rebuild_proxies(self, prepared_request, proxies):  # type: ignore[override]
        if self._use_env:  # a redirect to another host: its own proxy, or none (no_proxy)
            proxies = self._proxies_for(prepared_request.url)
        return super().rebuild_proxies(prepared_request, proxies)


def describe_proxies(env: Mapping[str, str] | None = None) -> str | None:
    """The proxies the environment sets, for one line at start ("https via
    http://user:***@proxy:3128 (no_proxy: .example.org)"), passwords masked; None
    without any. Lower case wins over upper case, as in curl and requests."""
    env = os.environ if env is None else env
    found: dict[str, str] = {}
    for lower in (False, True):  # upper case first, so that lower case overrides it
        for k, v in env.items():
            if k.lower().endswith("_proxy") and (k == k.lower()) == lower and v.strip():
                found[k.lower()[:-len("_proxy")]] = v.strip()
    via = [f"{k} via {mask_url(found[k])}" for k in ("http", "https", "all") if k in found]
    if not via:
        return None
    return ", ".join(via) + (f" (no_proxy: {found['no']})" if "no" in found else "")


def mask_url(url: str) -> str:
    """A proxy URL with its password replaced by ***."""
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.password is None:
            return url
        host = parts.hostname or ""
        netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "(unreadable proxy URL)"
