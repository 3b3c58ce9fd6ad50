"""Revisit old permanent failures: a fresh attempts budget, oldest first, fair across hosts."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from ..db import gbif_ids, upkeep
from ..db.connection import retry_locked, transaction
from ..db.sqlite import sqlite3
from ..progress import RunContext
from ..states import DEFAULT_MAX_ATTEMPTS

DEFAULT_LIMIT = 100_000  # per run: a day of one polite host, and a bounded burst of work
CHUNK = 10_000  # images reopened per transaction


@dataclass
class RevisitStats:
    reopened: int = 0
    hosts: int = 0

    def as_dict(self) -> dict:
        return {"reopened": self.reopened, "hosts": self.hosts}


def fair_shares(available: Mapping[int, int], limit: int) -> dict[int, int]:
    """How many of each host's due failures to reopen within ``limit`` (pure): every
    host gets an equal share, a host with fewer due than its share takes them all and
    leaves the rest to the others (water-filling); shares of unsaturated hosts differ
    by at most one (the remainder goes to the hosts with the least, then the lowest ids)."""
    out = dict.fromkeys(available, 0)
    left = max(limit, 0)
    open_hosts = sorted(h for h, n in available.items() if n > 0)
    while left > 0 and open_hosts:
        each, extra = divmod(left, len(open_hosts))
        # the remainder goes to the hosts with the least so far, so shares stay within one
        open_hosts.sort(key=lambda h: (out[h], h))
        still = []
        for i, h in enumerate(open_hosts):
            want = each + (1 if i < extra else 0)
            take = min(want, available[h] - out[h])
            out[h] += take
            left -= take
            if out[h] < available[h]:
                still.append(h)
        if len(still) == len(open_hosts):
            break  # nobody saturated: the shares are final
        open_hosts = still
    return out


def revisit(conn: sqlite3.Connection, older_than_days: float, limit: int = DEFAULT_LIMIT,
            ctx: RunContext | None = None, now: float | None = None) -> RevisitStats:
    """Give permanent failures last tried more than ``older_than_days`` ago a fresh
    attempts budget (status pending), at most ``limit``, each host's oldest first and
    the hosts served evenly; the replaced outcome goes to images.prev_error and the
    gbifIDs roll up. Reads walk images_failed; writes are chunked transactions."""
    ctx = ctx or RunContext(every=0.0)
    now = time.time() if now is None else now
    before = now - older_than_days * 86400
    st = RevisitStats()
    due = {h: upkeep.due_for_revisit(conn, h, before, limit)
           for h in upkeep.failed_hosts(conn)}
    shares = {h: n for h, n in fair_shares(due, limit).items() if n > 0}
    st.hosts = len(shares)
    for host_id, n in sorted(shares.items()):
        ids = upkeep.oldest_failed(conn, host_id, before, n)
        for i in range(0, len(ids), CHUNK):
            part = ids[i:i + CHUNK]

            def txn(part: list[int] = part) -> int:
                with transaction(conn):
                    gids = upkeep.reopen(conn, part)
                    gbif_ids.rollup(conn, gids, max_attempts=DEFAULT_MAX_ATTEMPTS, now=now)
                return len(gids)

            st.reopened += retry_locked(txn)
            ctx.check_stop()
    ctx.say(f"revisit: {st.reopened:,} permanent failures last tried over "
            f"{older_than_days:g} days ago reopened on {st.hosts:,} hosts "
            "(their last outcome kept in images.prev_error)")
    return st
