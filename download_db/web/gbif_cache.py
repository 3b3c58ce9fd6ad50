"""GBIF's image cache: the URL of an occurrence's cached copy of a media item (pure)."""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

# techdocs.gbif.org/en/openapi/images: a Thumbor cache that addresses an occurrence's media
# by gbifID and the MD5 of the media item's identifier URL; at most 1200x1200 px, JPEG
# quality <= 85. GBIF asks scripts to use a single HTTP connection: the shipped host
# policy (web/policy.py) says so for HOST.
DEFAULT_BASE = "https://api.gbif.org/v1/image/cache"
HOST = "api.gbif.org"


def media_key(identifier: str) -> str:
    """The cache's key of a media item: the MD5 hex digest of its identifier URL, byte
    for byte as GBIF has it (UTF-8)."""
    return hashlib.md5(identifier.encode("utf-8", "surrogatepass"),
                       usedforsecurity=False).hexdigest()


def cache_url(gbif_id: int, identifier: str, base: str = DEFAULT_BASE) -> str:
    """Where GBIF's cache serves its copy of ``identifier``, a media item of occurrence
    ``gbif_id``: ``<base>/occurrence/<gbifID>/media/<md5 of the identifier>``."""
    return f"{base.rstrip('/')}/occurrence/{int(gbif_id)}/media/{media_key(identifier)}"


def host_of(base: str) -> str:
    """The host name the cache's politeness is kept under (lower case, no port)."""
    return (urlsplit(base).hostname or "").lower()


def check_base(base: str) -> str | None:
    """Why ``base`` cannot be the cache's base URL (None: it can): an http(s) URL with a
    host, no query or fragment."""
    try:
        parts = urlsplit(base)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        return f"not a URL: {e}"
    if parts.scheme not in ("http", "https") or not host:
        return "not an http(s) URL with a host"
    if parts.query or parts.fragment:
        return "a base URL has no query or fragment"
    return None
