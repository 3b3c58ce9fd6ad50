"""The work queue in the images table: claim due images per host, record results, dead claims."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field

from ..states import (
    EXHAUSTED,
    EXHAUSTED_WHERE,
    FAILED_PERMANENT,
    FAILED_TRANSIENT,
    PARKED,
    PENDING,
    SUCCESS,
    TODO_WHERE,
    WORK_LEFT_SQL,
    backoff,
)
from . import runs, tallies
from .sqlite import sqlite3

# A claim sets claimed_by and moves next_attempt_at to the lease end: other
# claimers skip the row until then, so a dead process's claims come back by
# themselves. The index serves host_id = ? AND next_attempt_at <= ?.
_CLAIM = f"""
UPDATE images SET claimed_by = :token, next_attempt_at = :lease_until
 WHERE image_id IN (SELECT image_id FROM images INDEXED BY images_todo
                     WHERE {TODO_WHERE} AND host_id = :host_id AND next_attempt_at <= :now
                     ORDER BY next_attempt_at LIMIT :n)
RETURNING image_id, gbif_id, image_no, status, attempts, error_type, urls
"""
# Rows among the due ones whose previous claim ran out (its holder died, maybe on
# another node): their temp files are cleaned up by whoever takes them over.
# Looked up among the claimed rows (a few per worker), not among the host's due
# rows: a big host has millions of those, and almost none is claimed.
_EXPIRED = f"""
SELECT image_id FROM images INDEXED BY images_claimed
 WHERE claimed_by IS NOT NULL AND host_id = :host_id AND next_attempt_at <= :now
   AND {TODO_WHERE}
"""
# Claimed rows carry their lease end in next_attempt_at: they are someone's work
# in progress, not work that falls due.
_NEXT_DUE = f"""
SELECT min(next_attempt_at) FROM images INDEXED BY images_todo
 WHERE {TODO_WHERE} AND host_id = ? AND next_attempt_at < {EXHAUSTED} AND claimed_by IS NULL
"""


@dataclass
class Item:
    """One claimed image."""

    image_id: int
    gbif_id: int
    image_no: int
    status: str
    attempts: int
    error_type: str | None
    urls: list[str]
    host_id: int
    taken_over: bool = False  # its previous claim expired: a dead run may have left temps


@dataclass
class Result:
    """What happened to one claimed image (written by the writer thread)."""

    item: Item
    status: str  # SUCCESS / FAILED_TRANSIENT / FAILED_PERMANENT / PENDING (deferred)
    attempted: bool = True  # False: nothing was asked of any server (deferred/interrupted)
    http_status: int | None = None
    error_type: str | None = None
    error_detail: str | None = None
    file_path: str | None = None
    file_size: int | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    phash: int | None = None  # files/phash.py; None: `gbif-download-db hash` fills it in
    dhash: int | None = None
    # the URL whose response is the saved file (after rendition/IIIF rewrites, before
    # redirects); None when nothing was fetched (an adopted file)
    fetched_url: str | None = None
    retry_at: float | None = None  # deferred: when our host state allows another try
    temp: str | None = None  # success: temp file to rename after the commit
    extra: dict = field(default_factory=dict)


def make_token(run_id: int) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{run_id}"


def claim(conn: sqlite3.Connection, token: str, host_id: int, n: int, *, lease: float,
          now: float | None = None) -> list[Item]:
    """Claim up to n due images of one host (call inside a write transaction)."""
    now = time.time() if now is None else now
    args = {"token": token, "lease_until": now + lease, "host_id": host_id, "now": now, "n": n}
    expired = {r[0] for r in conn.execute(_EXPIRED, args)}
    rows = conn.execute(_CLAIM, args).fetchall()
    return [Item(r[0], r[1], r[2], r[3], r[4], r[5], r[6].split("\n"), host_id,
                 taken_over=r[0] in expired) for r in rows]


def next_due(conn: sqlite3.Connection, host_id: int) -> float | None:
    row = conn.execute(_NEXT_DUE, (host_id,)).fetchone()
    return row[0] if row and row[0] is not None else None


def result_params(r: Result, token: str, max_attempts: int, now: float) -> dict:
    attempts = r.item.attempts + (1 if r.attempted else 0)
    if r.status == SUCCESS:
        next_at = 0.0
    elif r.status == FAILED_TRANSIENT:
        next_at = now + backoff(attempts) if attempts < max_attempts else EXHAUSTED
    elif r.status == FAILED_PERMANENT:
        next_at = 0.0
    else:  # deferred because of our own host state: stays as it was, due later
        next_at = r.retry_at or now
    detail = r.error_detail[:2000] if r.error_detail else None
    return {
        "id": r.item.image_id, "token": token,
        # a deferral (status PENDING, nothing asked) keeps the row's status as it was
        "status": r.item.status if r.status == PENDING else r.status,
        "attempts": attempts, "http_status": r.http_status,
        "error_type": r.error_type if r.status != PENDING else r.item.error_type,
        "error_detail": detail, "file_path": r.file_path, "file_size": r.file_size,
        "sha256": r.sha256, "width": r.width, "height": r.height,
        "phash": r.phash, "dhash": r.dhash, "fetched_url": r.fetched_url,
        "last": now if r.attempted else None, "next": next_at,
        # a deferral (nothing asked of any server) keeps the previous outcome's details
        "keep_old": 1 if r.status == PENDING else 0,
        # a success keeps its claim until the file is renamed (see settle)
        "claimed_by": token if r.status == SUCCESS else None,
    }


_RESULT = """
UPDATE images SET status = :status, attempts = :attempts,
       http_status = CASE WHEN :keep_old THEN http_status ELSE :http_status END,
       error_type = :error_type,
       error_detail = CASE WHEN :keep_old THEN error_detail ELSE :error_detail END,
       file_path = :file_path, file_size = :file_size, sha256 = :sha256,
       width = :width, height = :height, phash = :phash, dhash = :dhash,
       fetched_url = :fetched_url,
       last_attempt_at = COALESCE(:last, last_attempt_at),
       next_attempt_at = :next, claimed_by = :claimed_by
 WHERE image_id = :id AND claimed_by = :token
"""


def record(conn: sqlite3.Connection, results: list[Result], token: str, max_attempts: int,
           now: float | None = None) -> list[Result]:
    """Write results (inside a transaction); returns those whose claim still held."""
    now = time.time() if now is None else now
    kept = []
    for r in results:
        cur = conn.execute(_RESULT, result_params(r, token, max_attempts, now))
        if cur.rowcount == 1:
            kept.append(r)
    return kept


def settle(conn: sqlite3.Connection, image_ids: list[int], token: str) -> None:
    """Release successes whose files are in place (inside a transaction)."""
    conn.executemany("UPDATE images SET claimed_by = NULL WHERE image_id = ? AND claimed_by = ?",
                     [(i, token) for i in image_ids])


def release(conn: sqlite3.Connection, items: list[tuple[Item, float]], token: str,
            now: float | None = None) -> None:
    """Give back claimed, untouched images, due again at the time given with each
    (now, or when their host's cooldown ends)."""
    now = time.time() if now is None else now
    conn.executemany("UPDATE images SET claimed_by = NULL, next_attempt_at = ? "
                     "WHERE image_id = ? AND claimed_by = ? AND status <> 'success'",
                     [(max(due, now), it.image_id, token) for it, due in items])


# Both walk the work-list index host by host (host_id IN drives it), and only on
# the hosts whose counters say a row changes: a start with the budget of the
# last run reads a few counter rows and walks nothing (it took 13 minutes at
# 113M images to find nothing to park).
_HOSTS = "host_id IN (SELECT value FROM json_each(:hosts))"


def reopen_exhausted(conn: sqlite3.Connection, max_attempts: int) -> int:
    """With a bigger attempts budget, make parked transient failures due again."""
    hosts = tallies.budget_hosts(conn, max_attempts)[0]
    if not hosts:
        return 0
    cur = conn.execute(
        f"UPDATE images SET next_attempt_at = last_attempt_at WHERE {TODO_WHERE} "
        f"AND {_HOSTS} AND {PARKED} AND {WORK_LEFT_SQL}",
        {"max_attempts": max_attempts, "hosts": json.dumps(hosts)})
    return cur.rowcount


def park_exhausted(conn: sqlite3.Connection, max_attempts: int) -> int:
    """With a smaller budget, park transient failures that have used it up (a rare
    start: it walks the work list of the hosts that have such rows)."""
    hosts = tallies.budget_hosts(conn, max_attempts)[1]
    if not hosts:
        return 0
    cur = conn.execute(
        f"UPDATE images SET next_attempt_at = {EXHAUSTED} WHERE {EXHAUSTED_WHERE} "
        f"AND {_HOSTS} AND NOT {WORK_LEFT_SQL}",
        {"max_attempts": max_attempts, "hosts": json.dumps(hosts)})
    return cur.rowcount


def dead_claims(conn: sqlite3.Connection, live_tokens: set[str]) -> list[tuple]:
    """Rows claimed by runs that are gone:
    (image_id, gbif_id, image_no, status, file_path, sha256, token)."""
    rows = conn.execute("SELECT image_id, gbif_id, image_no, status, file_path, sha256, claimed_by "
                        "FROM images INDEXED BY images_claimed WHERE claimed_by IS NOT NULL"
                        ).fetchall()
    return [r for r in rows if r[6] not in live_tokens]


def live_tokens(conn: sqlite3.Connection, stale_after: float, now: float | None = None) -> set[str]:
    """Claim tokens of runs that may still be alive (heartbeat recent, process
    alive when it ran on this machine)."""
    now = time.time() if now is None else now
    me = socket.gethostname()
    live = set()
    for run_id, host, pid, hb in conn.execute(
            "SELECT run_id, hostname, pid, heartbeat_at FROM runs "
            "WHERE stage = 'download' AND outcome = 'running'"):
        if hb is None or hb < now - stale_after:
            continue
        if host == me and not runs.pid_alive(pid):
            continue
        live.add(f"{host}:{pid}:{run_id}")
    return live
