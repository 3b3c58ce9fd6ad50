"""Known smaller renditions of image URLs: the fewest bytes that still cover the target."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

# A rendition that is not there is answered like this; then the URL as given is asked.
FALL_BACK = frozenset({403, 404})


@dataclass(frozen=True)
class SizeRule:
    """One publisher's URL scheme: <prefix>/<size name>.<ext>, sizes by long edge."""

    name: str
    source: str  # where the scheme and its sizes are documented
    hosts: tuple[str, ...]
    path: re.Pattern[str]  # matches the original's path; groups: prefix, size, ext
    original: str  # the size name of the original
    sizes: tuple[tuple[str, int], ...]  # (name, long edge in px), smallest first

    def rendition(self, url: str, target: int | None) -> str | None:
        """The smallest rendition covering the target, or None (keep the URL)."""
        if target is None:
            return None
        parts = urlsplit(url)
        if (parts.hostname or "").lower() not in self.hosts:
            return None
        m = self.path.fullmatch(parts.path)
        if m is None or m.group("size") != self.original:
            return None
        for name, edge in self.sizes:
            if edge >= target:
                path = f"{m.group('prefix')}/{name}.{m.group('ext')}"
                return urlunsplit(parts._replace(path=path))
        return None


# iNaturalist open data (its AWS Open Data bucket): photos/<id>/<size>.<ext> in sizes square
# (75 px, a crop: never used), thumb 100, small 240, medium 500, large 1024 and original
# (up to 2048) on the long edge, the extension the original's. Source: the size table of
# ghuertaramos/Inat_Images' README (shared research/publishers.md); the URL form is the one
# GBIF's multimedia.txt carries (examples/multimedia_sample.txt: 72 % of its rows).
INATURALIST = SizeRule(
    name="inaturalist-open-data",
    source="github.com/ghuertaramos/Inat_Images README (size option table)",
    hosts=("inaturalist-open-data.s3.amazonaws.com",),
    path=re.compile(r"(?P<prefix>/photos/\d+)/(?P<size>[a-z]+)\.(?P<ext>jpe?g|png|gif)",
                    re.IGNORECASE),
    original="original",
    sizes=(("thumb", 100), ("small", 240), ("medium", 500), ("large", 1024)),
)

RULES: tuple[SizeRule, ...] = (INATURALIST,)


def candidates(url: str, target: int | None, rules: tuple[SizeRule, ...] | None = None
               ) -> list[str]:
    """What to ask for one image URL, in order: a known smaller rendition covering
    `target` (long edge; None when keeping originals), then the URL as given."""
    for rule in RULES if rules is None else rules:
        smaller = rule.rendition(url, target)
        if smaller is not None and smaller != url:
            return [smaller, url]
    return [url]
