"""Canonical image keys: URL normalisation, IIIF collapsing and candidate ranking (pure)."""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple
from urllib.parse import quote

# Candidate kinds, in preference order at equal size: a direct image beats a
# IIIF info.json, which beats a Presentation manifest (both need a resolve step).
KIND_DIRECT = 0
KIND_INFO = 1
KIND_MANIFEST = 2

# "Largest known resolution" for renderings that are the full image (full/max)
# and for manifests/info.json, which resolve to the service's full size.
SIZE_FULL = 1 << 30
SIZE_UNKNOWN = 0

# Skip reasons produced here (the ingest adds the row-level ones).
SKIP_EMPTY = "empty_identifier"
SKIP_NONE = "identifier_none"
SKIP_SCHEME = "bad_scheme"
SKIP_URL = "bad_url"


class Candidate(NamedTuple):
    """One identifier, parsed: what to fetch, which image it shows, how good it is."""

    url: str  # normalised URL (what the downloader fetches)
    key: str  # canonical image key: all renderings of one photo share it
    host: str  # lower-case host name, no port (the politeness unit)
    kind: int  # KIND_DIRECT / KIND_INFO / KIND_MANIFEST
    size: int  # long edge in px known from the URL, SIZE_FULL, or SIZE_UNKNOWN


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)([^#]*)")
_HOST = re.compile(r"[a-z0-9._~%\-]+|\[[0-9a-f:.]+\]")
_PORT = re.compile(r"[0-9]{1,5}")
_DEFAULT_PORT = {"http": "80", "https": "443"}
_SIMPLE_HOST = re.compile(r"[a-z0-9.\-]+")
_WS = re.compile(r"\s")

# IIIF Image API tail: /{region}/{size}/{rotation}/{quality}.{format}, v1-v3.
# Region and size are matched strictly so that ordinary paths such as
# /photos/2021/09/12/default.jpg are not mistaken for renderings.
_IIIF_TAIL = re.compile(
    r"(?P<base>/.+)"
    r"/(?P<region>full|square|\d+,\d+,\d+,\d+|pct:[\d.]+,[\d.]+,[\d.]+,[\d.]+)"
    r"/(?P<size>\^?(?:full|max|pct:[\d.]+|!?\d+,\d*|!?,\d+)|res:\d+)"
    r"/(?P<rot>!?\d+(?:\.\d+)?)"
    r"/(?P<quality>default|color|colour|gray|grey|bitonal|native)\.(?P<fmt>[A-Za-z0-9]+)",
    re.IGNORECASE,
)
_SIZE_NUMS = re.compile(r"\d+")


def rendering_size(region: str, size: str) -> int:
    """Long edge a IIIF rendering promises, from its region and size segments."""
    if region.lower() != "full":
        return SIZE_UNKNOWN  # a crop is not the whole image
    s = size.lower().lstrip("^")
    if s in ("full", "max"):
        return SIZE_FULL
    if s.startswith("pct:"):
        try:
            return SIZE_FULL if float(s[4:]) >= 100 else SIZE_UNKNOWN
        except ValueError:
            return SIZE_UNKNOWN
    if s.startswith("res:"):
        return SIZE_UNKNOWN
    nums = _SIZE_NUMS.findall(s)
    return max(int(n) for n in nums) if nums else SIZE_UNKNOWN


def _encode_ws(text: str) -> str:
    # Servers receive %20 anyway (requests encodes it); doing it here makes the
    # key of "a b.jpg" and "a%20b.jpg" the same.
    return _WS.sub(lambda m: quote(m.group(0), safe=""), text)


def parse_identifier(raw: str) -> Candidate | str:
    """Parse one multimedia ``identifier`` into a Candidate, or return a skip reason.

    Normalises scheme and host case, drops default ports and fragments, and
    collapses IIIF manifests, info.json and every Image API rendering of one
    identifier to the identifier's base URL as the key.
    """
    s = raw.strip()
    if not s:
        return SKIP_EMPTY
    m = _URL.match(s)
    if m is None:
        # "https:/x" names a scheme we fetch but is not a URL; "ftp:..", "urn:.." are not ours
        scheme = _SCHEME.match(s)
        return SKIP_URL if scheme and scheme.group(1).lower() in _DEFAULT_PORT else SKIP_SCHEME
    scheme = m.group(1).lower()
    if scheme not in _DEFAULT_PORT:
        return SKIP_SCHEME
    authority, rest = m.group(2), m.group(3)
    # userinfo is kept verbatim; only the host part is case-insensitive
    userinfo, _, hostport = authority.rpartition("@")
    hostport = hostport.lower()
    if hostport.startswith("["):
        host, _, port = hostport.partition("]")
        host += "]"
        port = port[1:] if port.startswith(":") else port
    else:
        host, _, port = hostport.partition(":")
    if not host or _HOST.fullmatch(host) is None or (port and not _PORT.fullmatch(port)):
        return SKIP_URL
    if port == _DEFAULT_PORT[scheme] or port == "":
        netloc = host
    else:
        netloc = f"{host}:{int(port)}"
    if userinfo:
        netloc = f"{userinfo}@{netloc}"
    if not rest:
        rest = "/"
    elif rest[0] == "?":
        rest = "/" + rest
    if _WS.search(rest):
        rest = _encode_ws(rest)
    path, _, _query = rest.partition("?")
    if path.endswith("/None"):
        return SKIP_NONE
    origin = f"{scheme}://{netloc}"
    url = origin + rest
    host_name = host.strip("[]")

    low = path.lower()
    if low.endswith("/manifest") or low.endswith("/manifest.json"):
        base = path[: path.rfind("/")]
        if base:
            return Candidate(url, origin + base, host_name, KIND_MANIFEST, SIZE_FULL)
    elif low.endswith("/info.json"):
        base = path[: -len("/info.json")]
        if base:
            return Candidate(url, origin + base, host_name, KIND_INFO, SIZE_FULL)
    elif "/" in path[1:] and "." in path:
        t = _IIIF_TAIL.fullmatch(path)
        if t is not None:
            size = rendering_size(t.group("region"), t.group("size"))
            return Candidate(url, origin + t.group("base"), host_name, KIND_DIRECT, size)
    return Candidate(url, url, host_name, KIND_DIRECT, SIZE_UNKNOWN)


def rank_key(c: Candidate, order: int) -> tuple[int, int, int]:
    """Sort key for candidates of one image: largest first, direct before
    manifest at equal size, file order otherwise."""
    return (-c.size, c.kind, order)


def rank_candidates(cands: list[Candidate]) -> list[Candidate]:
    """Candidates best first, each normalised URL once (first occurrence wins)."""
    order = sorted(range(len(cands)), key=lambda i: rank_key(cands[i], i))
    seen: set[str] = set()
    out = []
    for i in order:
        c = cands[i]
        if c.url not in seen:
            seen.add(c.url)
            out.append(c)
    return out


def attribution_id(joined: str) -> int:
    """Stable 64-bit id of a "license\x1frights_holder\x1fcreator" string.

    Content-addressed, so every chunk (and every resumed run) gives the same id
    without a lookup table in memory.
    """
    d = hashlib.blake2b(joined.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(d, "big", signed=True)
