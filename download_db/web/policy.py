"""Per-host limits: the shipped host policy, overridden by the user's TOML file (--host-policy)."""

from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib; tomli is the same parser
    import tomli as tomllib

# Hosts whose owners publish their limits; every entry says where. A user's file
# overrides these host by host and key by key (docs/host-policy.md).
SHIPPED = """\
# GBIF's image cache (Thumbor): "Please limit scripted usage of this API to a single
# HTTP connection." (techdocs.gbif.org/en/openapi/images)
[hosts."api.gbif.org"]
max_at_once = 1

# Amazon S3 serves at least 5,500 GET requests per second per partitioned prefix and
# asks clients to raise their rate gradually (docs.aws.amazon.com/AmazonS3/latest/
# userguide/optimizing-performance.html). iNaturalist's open-data photos live here
# (inaturalist-open-data.s3.amazonaws.com: 72 % of examples/multimedia_sample.txt).
[hosts."*.s3.amazonaws.com"]
max_at_once = 32
max_rate = 0
adaptive = true
start = 4
"""
SHIPPED_NAME = "the shipped host policy"


@dataclass(frozen=True)
class HostLimits:
    """What one host may be asked, all threads, processes and array tasks together."""

    max_at_once: int = 4  # simultaneous requests (the adaptive limit's ceiling)
    max_rate: float = 5.0  # requests per second; 0 = only max_at_once applies
    adaptive: bool = False  # a controller finds the limit within [1, max_at_once]
    start: int = 2  # where the adaptive limit starts


# --adaptive: hosts the policy does not name start at 2 at once and may grow to 16,
# with no rate limit of their own (the controller backs off on latency and 429/503)
ADAPTIVE_DEFAULT = HostLimits(max_at_once=16, max_rate=0.0, adaptive=True, start=2)


_CHECKS: dict[str, tuple[type | tuple[type, ...], Any, str]] = {
    "max_at_once": (int, lambda v: v >= 1, "an integer >= 1"),
    "max_rate": ((int, float), lambda v: v >= 0, "a number >= 0 (0 = no rate limit)"),
    "adaptive": (bool, lambda v: True, "true or false"),
    "start": (int, lambda v: v >= 1, "an integer >= 1"),
}


def _kind(pattern: str) -> str:
    if any(c in pattern for c in "*?["):
        return "glob"
    return "suffix" if pattern.startswith(".") else "exact"


def matches(pattern: str, host: str) -> bool:
    """Exact name; ".example.org": the domain and every name under it; a glob
    ("*.s3.amazonaws.com", "iiif.*.org") as fnmatch reads it."""
    kind = _kind(pattern)
    if kind == "exact":
        return host == pattern
    if kind == "suffix":
        return host == pattern[1:] or host.endswith(pattern)
    return fnmatch.fnmatchcase(host, pattern)


def specificity(pattern: str) -> tuple[int, int, int]:
    """Most specific wins: an exact name, then the most literal characters, then a
    suffix before a glob of the same length."""
    kind = _kind(pattern)
    literal = sum(c not in "*?[]" for c in pattern)
    return (kind == "exact", literal, kind == "suffix")


class HostPolicy:
    """host -> HostLimits: the most specific matching pattern's keys over the defaults."""

    def __init__(self, default: HostLimits, entries: dict[str, dict[str, Any]]) -> None:
        self.default = default
        self.entries = entries
        self._order = sorted(entries, key=specificity, reverse=True)
        self._cache: dict[str, HostLimits] = {}

    def limits(self, host: str) -> HostLimits:
        got = self._cache.get(host)
        if got is None:
            name = host.lower().rstrip(".")
            pattern = next((p for p in self._order if matches(p, name)), None)
            got = replace(self.default, **self.entries[pattern]) if pattern else self.default
            self._cache[host] = got
        return got

    def pattern(self, host: str) -> str | None:
        """The pattern that sets this host's limits (None: the defaults)."""
        name = host.lower().rstrip(".")
        return next((p for p in self._order if matches(p, name)), None)

    def largest(self) -> int:
        """The highest max_at_once of any host: what one process's pool must allow."""
        return max([self.default.max_at_once]
                   + [e.get("max_at_once", self.default.max_at_once)
                      for e in self.entries.values()])


def parse(text: str, name: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(default keys, pattern -> keys) of one policy document; InputError naming the
    file and the problem, in one line."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{name}: not valid TOML: {e}") from None
    unknown = sorted(set(doc) - {"default", "hosts"})
    if unknown:
        raise InputError(f"{name}: unknown table [{unknown[0]}] (a policy has [default] "
                         'and [hosts."PATTERN"] tables)')
    default = _keys(doc.get("default", {}), "[default]", name)
    hosts = doc.get("hosts", {})
    if not isinstance(hosts, dict):
        raise InputError(f'{name}: hosts must be tables: [hosts."PATTERN"]')
    entries: dict[str, dict[str, Any]] = {}
    for pattern, keys in hosts.items():
        p = pattern.strip().lower().rstrip(".")
        where = f'[hosts."{pattern}"]'
        if not p or p == "." or any(c in p for c in ":/ \t@") or p.strip("*?.") == "":
            raise InputError(f"{name}: {where}: not a host name or pattern (e.g. "
                             '"images.example.org", ".example.org", "*.s3.amazonaws.com")')
        # "A.org" and "a.org." are the same host: their keys merge, the later wins
        entries[p] = {**entries.get(p, {}), **_keys(keys, where, name)}
    return default, entries


def _keys(table: Any, where: str, name: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise InputError(f"{name}: {where} must be a table of keys")
    out: dict[str, Any] = {}
    for key, value in table.items():
        check = _CHECKS.get(key)
        if check is None:
            known = ", ".join(f.name for f in fields(HostLimits))
            raise InputError(f"{name}: {where}: unknown key {key!r} (known: {known})")
        kind, ok, what = check
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind) \
                or not ok(value):
            raise InputError(f"{name}: {where}: {key} must be {what}, not {value!r}")
        out[key] = float(value) if key == "max_rate" else value
    return out


def load(path: Path | None, default: HostLimits,
         same_as: dict[str, str] | None = None) -> HostPolicy:
    """The shipped policy with the user's file (if any) over it, key by key.
    ``same_as``: host -> pattern whose limits the host takes unless the user's file
    names it (GBIF's image cache at another address: a mirror, a test server)."""
    _unused, entries = parse(SHIPPED, SHIPPED_NAME)
    user: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"--host-policy {path}: cannot read it: "
                             f"{getattr(e, 'strerror', None) or e}") from None
        user_default, user = parse(text, f"--host-policy {path}")
        default = replace(default, **user_default)
        for pattern, keys in user.items():
            entries[pattern] = {**entries.get(pattern, {}), **keys}
    for host, like in (same_as or {}).items():
        host = host.lower().rstrip(".")
        if host and host != like and host not in user and like in entries:
            entries[host] = dict(entries[like])
    return HostPolicy(default, entries)
