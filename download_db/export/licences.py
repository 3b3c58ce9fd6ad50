"""Licence strings as publishers write them -> one short form (pure; never raises)."""

from __future__ import annotations

import re
from functools import lru_cache

CC0, CC_BY, CC_BY_SA, CC_BY_NC = "CC0", "CC-BY", "CC-BY-SA", "CC-BY-NC"
CC_BY_NC_SA, CC_BY_ND, CC_BY_NC_ND = "CC-BY-NC-SA", "CC-BY-ND", "CC-BY-NC-ND"
PD, OTHER, UNKNOWN = "PD", "other", "unknown"
SHORT_FORMS = (CC0, CC_BY, CC_BY_SA, CC_BY_NC, CC_BY_NC_SA, CC_BY_ND, CC_BY_NC_ND, PD, OTHER,
               UNKNOWN)

# creativecommons.org/licenses/<code>/<version>: the code names the terms.
_CC_URL = re.compile(r"creativecommons\.org/licen[cs]es/([a-z-]+)")
_CC_ZERO = re.compile(r"creativecommons\.org/publicdomain/zero|\bcc[\s_-]*(?:0|zero)\b")
_CC_MARK = re.compile(r"creativecommons\.org/publicdomain/mark|\bpublic[\s_-]*domain\b|\bpdm\b"
                      r"|no known copyright")
# "CC BY-NC 4.0", "cc-by", "CC_BY_NC_4_0" (GBIF's enumeration), "(CC BY-SA)"
_CC_CODE = re.compile(r"\bcc[\s-]*(by(?:[\s-]*(?:nc|sa|nd)\b)*)")
# The long names: "Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International"
_ATTRIBUTION = re.compile(r"\battribution\b")
_NC = re.compile(r"non[\s_-]?commercial")
_SA = re.compile(r"share[\s_-]?alike")
_ND = re.compile(r"no[\s_-]?deriv")
# A rights statement that is not an open licence ("All rights reserved", "(c) Kew").
_RIGHTS = re.compile(r"©|\(c\)|copyright|rights|reserved|licen[cs]|permission|terms of use")


def _from_terms(nc: bool, sa: bool, nd: bool) -> str:
    if nd:  # ND and SA cannot go together; ND decides
        return CC_BY_NC_ND if nc else CC_BY_ND
    if sa:
        return CC_BY_NC_SA if nc else CC_BY_SA
    return CC_BY_NC if nc else CC_BY


def _from_code(code: str) -> str:
    parts = set(re.split(r"[\s_-]+", code))
    return _from_terms("nc" in parts, "sa" in parts, "nd" in parts)


@lru_cache(maxsize=65536)
def normalise(text: str | None) -> str:
    """The short form of a licence string: one of SHORT_FORMS.

    URLs first (the most exact), then CC codes and long names in free text, then
    public-domain marks. A copyright or rights statement with no open licence in
    it is ``other``; empty text or text that states no terms (a bare name, "??")
    is ``unknown``.
    """
    if not text:
        return UNKNOWN
    # GBIF's enumeration writes CC_BY_NC_4_0; "_" is a word character to \b
    t = str(text).strip().lower().replace("_", " ")
    if not t:
        return UNKNOWN
    m = _CC_URL.search(t)
    if m:
        code = m.group(1).strip("-")
        return _from_code(code) if code.startswith("by") else OTHER
    if _CC_ZERO.search(t):
        return CC0
    m = _CC_CODE.search(t)
    if m:
        return _from_code(m.group(1))
    if _CC_MARK.search(t):
        return PD
    if _ATTRIBUTION.search(t):
        return _from_terms(bool(_NC.search(t)), bool(_SA.search(t)), bool(_ND.search(t)))
    if "creative commons" in t or "creativecommons" in t:
        return OTHER
    if _RIGHTS.search(t):
        return OTHER
    return UNKNOWN


def parse_filter(value: str) -> list[str]:
    """``--license CC0,CC-BY`` -> the short forms, case-insensitive; ValueError names
    the first one that is not a short form."""
    by_lower = {s.lower(): s for s in SHORT_FORMS}
    out: list[str] = []
    for part in value.split(","):
        name = part.strip()
        if not name:
            continue
        if name.lower() not in by_lower:
            raise ValueError(f"unknown licence {name!r}; use one or more of "
                             f"{', '.join(SHORT_FORMS)}")
        out.append(by_lower[name.lower()])
    return out
