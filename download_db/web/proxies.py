"""The proxies and CA bundle the environment sets, as curl and pip honour them, read once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

import certifi
from requests import utils as rq
from urllib3.util import make_headers


class EnvProxies:
    """The environment's proxies and CA bundle, read once: the proxy for a scheme and
    host:port is looked up once (no_proxy included, with requests' rules: suffixes,
    CIDR, ports), the CA bundle at start. ~/.netrc is not read, as curl does not by
    default, so no stored password is sent to a publisher. use_env=False (--no-proxy):
    direct connections, certifi's CA bundle."""

    def __init__(self, use_env: bool) -> None:
        self._use_env = use_env
        self._found: dict[tuple[str, str], str | None] = {}
        ca = (os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
              if use_env else None) or certifi.where()
        self.tls: dict[str, str] = {"cert_reqs": "CERT_REQUIRED",
                                    ("ca_cert_dir" if os.path.isdir(ca) else "ca_certs"): ca}

    def proxy_for(self, url: str) -> str | None:
        """The proxy URL to reach url through, or None for a direct connection."""
        if not self._use_env:
            return None
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc.lower())
        if key not in self._found:
            proxy = rq.select_proxy(url, rq.get_environ_proxies(url))
            self._found[key] = rq.prepend_scheme_if_needed(proxy, "http") if proxy else None
        return self._found[key]

    @staticmethod
    def proxy_headers(proxy: str) -> dict[str, str]:
        """Proxy-Authorization from credentials in the proxy URL, as requests sends it."""
        user, password = rq.get_auth_from_url(proxy)
        return make_headers(proxy_basic_auth=f"{user}:{password}") if user else {}


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
