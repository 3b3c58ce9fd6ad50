"""Placeholders found while downloading: one host's same bytes behind many URLs, bounded memory."""

from __future__ import annotations

import re
from collections import Counter, OrderedDict
from collections.abc import Iterable
from pathlib import Path

from ..db import placeholders as table
from ..db.claims import Result
from ..db.connection import retry_locked, transaction
from ..db.sqlite import sqlite3
from ..states import PLACEHOLDER, PLACEHOLDER_MAX_SHARED, SUCCESS
from .placeholders import Blocklist, Group, flag_all

_SHA = re.compile(r"sha256 ([0-9a-f]{64})")  # as Blocklist.match names the bytes it refused

# Recent (host, sha256) pairs remembered: a placeholder repeats often, so it stays among
# the recent ones; a collection's millions of distinct pictures pass through and are
# forgotten. About 200 bytes each: 40 MB at most.
CAPACITY = 200_000


class RepeatWatch:
    """Counts, per host and content hash, the different URLs that gave those bytes;
    past ``max_shared`` the images are a placeholder group. Pure: results in, groups out.

    Memory is bounded by ``capacity`` pairs (least recently seen forgotten first) and
    ``max_shared + 1`` image ids per pair, so a download of any size fits; what it
    forgets, dedupe and finalize still find over the whole database."""

    def __init__(self, max_shared: int = PLACEHOLDER_MAX_SHARED,
                 capacity: int = CAPACITY) -> None:
        self.max_shared, self.capacity = max_shared, capacity
        # (host_id, sha256) -> ({url: image_id}, flagged already)
        self._recent: OrderedDict[tuple[int, str], tuple[dict[str, int], list[bool]]] = \
            OrderedDict()

    def add(self, host_id: int, sha256: str, url: str, image_id: int) -> Group | None:
        """One saved image; a group to flag when its bytes just became a placeholder
        (all images so far), or, once it is one, this image alone."""
        key = (host_id, sha256)
        entry = self._recent.get(key)
        if entry is None:
            self._recent[key] = ({url: image_id}, [False])
            if len(self._recent) > self.capacity:
                self._recent.popitem(last=False)
            return None
        self._recent.move_to_end(key)
        urls, flagged = entry
        if flagged[0]:
            return Group(host_id, (image_id,), None)
        urls.setdefault(url, image_id)  # the same URL again (another gbifID) counts once
        if len(urls) <= self.max_shared:
            return None
        flagged[0] = True
        ids = tuple(sorted(urls.values()))
        urls.clear()  # the ids are flagged now: keep only the verdict
        return Group(host_id, ids, None)


class LivePlaceholders:
    """The writer's side (its thread, its connection, after each commit): feed saved
    images to a RepeatWatch, flag the groups it returns as dedupe would (example kept,
    other files removed, placeholders row, gbifID roll-up) and add their bytes to the
    workers' blocklist, so later matches are refused before they are saved."""

    def __init__(self, conn: sqlite3.Connection, root: Path, blocklist: Blocklist,
                 max_attempts: int, watch: RepeatWatch | None = None) -> None:
        self.conn, self.root, self.blocklist = conn, root, blocklist
        self.max_attempts = max_attempts
        self.watch = watch or RepeatWatch()
        self._hosts: dict[str, int] = {}  # sha256 found here -> its host

    def committed(self, kept: Iterable[Result]) -> int:
        """Results just committed and renamed into place; returns images flagged."""
        found: list[Group] = []
        refused: Counter[str] = Counter()
        for r in kept:
            if r.error_type == PLACEHOLDER and r.error_detail:
                m = _SHA.search(r.error_detail)
                if m and m.group(1) in self._hosts:  # refused as one found here: count it
                    refused[m.group(1)] += 1
            if r.status != SUCCESS or not r.sha256 or r.extra.get("shared"):
                continue  # a linked copy of another image's fetch is not another URL
            url = r.fetched_url or r.item.urls[0]
            g = self.watch.add(r.item.host_id, r.sha256, url, r.item.image_id)
            if g is not None:
                found.append(g)
                self._hosts[r.sha256] = r.item.host_id
                self.blocklist.found.add(r.sha256)  # workers refuse it from now on
        if refused:
            retry_locked(lambda: self._count(refused))
        if not found:
            return 0
        flagged, _removed = flag_all(self.conn, found, self.root, {}, self.max_attempts)
        return flagged

    def _count(self, refused: Counter[str]) -> None:
        with transaction(self.conn):
            for sha, n in refused.items():
                table.add_images(self.conn, self._hosts[sha], sha, n)
