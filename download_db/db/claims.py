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
    FROM_GBIF_CACHE,
    NOT_IN_GBIF_CACHE,
    PARKED,
    PENDING,
    RESCUE_WHERE,
    SUCCESS,
    TODO_WHERE,
    WORK_LEFT_SQL,
    backoff,
)
from . import runs, tallies
from .sqlite import sqlite3
from .upkeep import PREV_ERROR_SQL

# A claim sets claimed_by and moves next_attempt_at to the lease end: other
# claimers skip the row until then, so a dead process's claims come back by
# themselves. The index serves host_id = ? AND next_attempt_at <= ?.
_CLAIM = f"""
UPDATE images SET claimed_by = :token, next_attempt_at = :lease_until
 WHERE image_id IN (SELECT image_id FROM images INDEXED BY images_todo
                     WHERE {TODO_WHERE} AND host_id = :host_id AND next_attempt_at <= :now
                     ORDER BY next_attempt_at LIMIT :n)
RETURNING image_id, gbif_id, image_no, status, attempts, error_type, urls, url_group
"""
# With them, in the same transaction, the due rows sharing a claimed row's first URL
# (url_group, ingest/url_groups.py): every image of a shared URL is then held by one
# process, whose one fetch per URL (download/shared.py) serves them all. Rows held by
# a live claim are not due (their lease end is ahead); a dead holder's are. Bounded
# (a publisher's one placeholder URL may stand for thousands of images): the rest
# are claimed with a later batch, at worst by another process that fetches it again.
_CLAIM_MATES = f"""
UPDATE images SET claimed_by = :token, next_attempt_at = :lease_until
 WHERE image_id IN (SELECT image_id FROM images INDEXED BY images_url_group
                     WHERE url_group IS NOT NULL
                       AND url_group IN (SELECT value FROM json_each(:groups))
                       AND {TODO_WHERE} AND host_id = :host_id AND next_attempt_at <= :now
                     LIMIT :mates)
RETURNING image_id, gbif_id, image_no, status, attempts, error_type, urls, url_group
"""
MATES_MAX = 1000  # group-mates taken with one claim
# A saved image of a claimed row's group (in place: no claim; the publisher's bytes, not
# GBIF's cache's): the claimed rows link its file instead of fetching the URL again.
_SAVED_MATES = """
SELECT url_group, image_id, file_path, file_size, sha256, width, height, phash, dhash,
       edge_hashes, error_type, fetched_url FROM images INDEXED BY images_url_group
 WHERE url_group IS NOT NULL AND url_group IN (SELECT value FROM json_each(:groups))
   AND status = 'success' AND claimed_by IS NULL AND from_gbif_cache IS NULL
   AND file_path IS NOT NULL AND sha256 IS NOT NULL
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
    # a permanent failure claimed for the rescue from GBIF's image cache: fetched from
    # the cache (host_id is RESCUE_QUEUE), recorded by rescue_params
    rescue: bool = False
    cache_tries: int = 0  # a rescue's failed tries of the cache so far (-from_gbif_cache)
    # a saved image with the same first URL (_SAVED_MATES's row less url_group), or None
    saved: tuple | None = None


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
    edge_hashes: bytes | None = None  # files/edgehash.py, with the two above
    # the URL whose response is the saved file (after rendition/IIIF rewrites, before
    # redirects); None when nothing was fetched (an adopted file)
    fetched_url: str | None = None
    retry_at: float | None = None  # deferred: when our host state allows another try
    temp: str | None = None  # success: temp file to rename after the commit
    extra: dict = field(default_factory=dict)


# --- the rescue from GBIF's image cache (download --rescue-from-gbif-cache) -------------
# Its rows stay failed_permanent until the cache's copy is saved: they are not work left,
# the publisher's queue never takes them, and their counters do not move on a claim. One
# queue for all of them, under the cache's host: the scheduler knows it by this id (no
# hosts row has it), the writer claims for it here. The index is images_rescue.
RESCUE_QUEUE = -1
_RESCUE_CLAIM = f"""
UPDATE images SET claimed_by = :token, next_attempt_at = :lease_until
 WHERE image_id IN (SELECT image_id FROM images INDEXED BY images_rescue
                     WHERE {RESCUE_WHERE} AND next_attempt_at <= :now
                     ORDER BY next_attempt_at LIMIT :n)
RETURNING image_id, gbif_id, image_no, status, attempts, error_type, urls, from_gbif_cache
"""
_RESCUE_EXPIRED = ("SELECT image_id FROM images INDEXED BY images_claimed WHERE claimed_by "
                   "IS NOT NULL AND status = 'failed_permanent' AND next_attempt_at <= :now")
_RESCUE_NEXT_DUE = (f"SELECT min(next_attempt_at) FROM images INDEXED BY images_rescue "
                    f"WHERE {RESCUE_WHERE} AND claimed_by IS NULL")
_RESCUE_COUNT = f"SELECT count(*) FROM images INDEXED BY images_rescue WHERE {RESCUE_WHERE}"
_RESCUE_COUNT_OF = ("SELECT count(*) FROM images INDEXED BY images_gbif_cache WHERE "
                    "from_gbif_cache IS NOT NULL AND from_gbif_cache = ? AND status = ?")
# The cache's copy saved: a success like any, marked, the publisher's outcome kept in
# prev_error (as a revisit keeps it); attempts stay the publisher's.
_RESCUED = f"""
UPDATE images SET status = 'success', http_status = :http_status, error_type = :error_type,
       error_detail = :error_detail, file_path = :file_path, file_size = :file_size,
       sha256 = :sha256, width = :width, height = :height, phash = :phash, dhash = :dhash,
       edge_hashes = :edges,
       prev_error = {PREV_ERROR_SQL}, from_gbif_cache = {FROM_GBIF_CACHE},
       fetched_url = :fetched_url, last_attempt_at = :now, next_attempt_at = 0,
       claimed_by = :token
 WHERE image_id = :id AND claimed_by = :token
"""
# Anything else leaves the publisher's outcome as it was (last_attempt_at too: a revisit
# counts from the publisher's last answer) and says what the cache did.
_NOT_RESCUED = """
UPDATE images SET from_gbif_cache = :fgc, next_attempt_at = :next, claimed_by = NULL
 WHERE image_id = :id AND claimed_by = :token
"""


def claim_rescue(conn: sqlite3.Connection, token: str, n: int, *, lease: float,
                 now: float | None = None) -> list[Item]:
    """Claim up to n permanent failures due a try of GBIF's image cache (inside a write
    transaction). A dead run's claim runs out like any other (recovery clears it)."""
    now = time.time() if now is None else now
    expired = {r[0] for r in conn.execute(_RESCUE_EXPIRED, {"now": now})}
    rows = conn.execute(_RESCUE_CLAIM, {"token": token, "lease_until": now + lease,
                                        "now": now, "n": n}).fetchall()
    return [Item(r[0], r[1], r[2], r[3], r[4], r[5], r[6].split("\n"), RESCUE_QUEUE,
                 taken_over=r[0] in expired, rescue=True, cache_tries=-(r[7] or 0))
            for r in rows]


def next_rescue_due(conn: sqlite3.Connection) -> float | None:
    row = conn.execute(_RESCUE_NEXT_DUE).fetchone()
    return row[0] if row and row[0] is not None else None


def count_rescue(conn: sqlite3.Connection) -> int:
    """Permanent failures the rescue may still try (a walk of images_rescue)."""
    return conn.execute(_RESCUE_COUNT).fetchone()[0]


def rescue_counts(conn: sqlite3.Connection) -> tuple[int, int]:
    """(images saved from the cache, permanent failures it had no copy of): the report's,
    from the small index images_gbif_cache; (0, 0) on a database from before the rescue
    (the report reads without migrating)."""
    try:
        return (conn.execute(_RESCUE_COUNT_OF, (FROM_GBIF_CACHE, SUCCESS)).fetchone()[0],
                conn.execute(_RESCUE_COUNT_OF, (NOT_IN_GBIF_CACHE, FAILED_PERMANENT)
                             ).fetchone()[0])
    except sqlite3.OperationalError:  # no such column / index
        return 0, 0


def rescue_params(r: Result, token: str, max_attempts: int, now: float) -> tuple[str, dict]:
    """(statement, parameters) recording the outcome of one try of the cache."""
    if r.status == SUCCESS:
        return _RESCUED, {
            "id": r.item.image_id, "token": token, "now": now, "http_status": r.http_status,
            "error_type": r.error_type, "error_detail": "saved from GBIF's image cache",
            "file_path": r.file_path, "file_size": r.file_size, "sha256": r.sha256,
            "width": r.width, "height": r.height, "phash": r.phash, "dhash": r.dhash,
            # the cache's URL: where the file came from
            "edges": r.edge_hashes, "fetched_url": r.fetched_url}
    fgc: int | None
    if r.status == FAILED_TRANSIENT:  # -k: k tries failed so far; 0 once the budget is spent
        tries = r.item.cache_tries + 1
        fgc = -tries if tries < max_attempts else NOT_IN_GBIF_CACHE
        nxt = now + backoff(tries) if tries < max_attempts else 0.0
    elif r.status == FAILED_PERMANENT:
        fgc, nxt = NOT_IN_GBIF_CACHE, 0.0
    else:  # deferred (our host state, our network): as it was, due again later
        fgc, nxt = -r.item.cache_tries or None, r.retry_at or now
    return _NOT_RESCUED, {"id": r.item.image_id, "token": token, "fgc": fgc, "next": nxt}


def make_token(run_id: int) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{run_id}"


def claim(conn: sqlite3.Connection, token: str, host_id: int, n: int, *, lease: float,
          now: float | None = None) -> list[Item]:
    """Claim up to n due images of one host, and the due images sharing their first
    URL with them (call inside a write transaction)."""
    now = time.time() if now is None else now
    args = {"token": token, "lease_until": now + lease, "host_id": host_id, "now": now, "n": n}
    expired = {r[0] for r in conn.execute(_EXPIRED, args)}
    rows = conn.execute(_CLAIM, args).fetchall()
    groups = json.dumps(sorted({r[7] for r in rows if r[7] is not None}))
    saved: dict[int, tuple] = {}
    if groups != "[]":
        rows += conn.execute(_CLAIM_MATES, {**args, "groups": groups,
                                            "mates": MATES_MAX}).fetchall()
        for g, *done in conn.execute(_SAVED_MATES, {"groups": groups}):
            saved.setdefault(g, tuple(done))
    return [Item(r[0], r[1], r[2], r[3], r[4], r[5], r[6].split("\n"), host_id,
                 taken_over=r[0] in expired, saved=saved.get(r[7])) for r in rows]


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
        "phash": r.phash, "dhash": r.dhash, "edges": r.edge_hashes, "fetched_url": r.fetched_url,
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
       edge_hashes = :edges,
       fetched_url = :fetched_url,
       last_attempt_at = COALESCE(:last, last_attempt_at),
       next_attempt_at = :next, claimed_by = :claimed_by,
       from_gbif_cache = CASE WHEN :keep_old THEN from_gbif_cache END
 WHERE image_id = :id AND claimed_by = :token
"""


def record(conn: sqlite3.Connection, results: list[Result], token: str, max_attempts: int,
           now: float | None = None) -> list[Result]:
    """Write results (inside a transaction); returns those whose claim still held."""
    now = time.time() if now is None else now
    kept = []
    for r in results:
        if r.item.rescue:
            sql, params = rescue_params(r, token, max_attempts, now)
            cur = conn.execute(sql, params)
        else:
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


def live_tokens(conn: sqlite3.Connection, stale_after: float, now: float | None = None,
                stage: str = "download") -> set[str]:
    """Claim tokens of ``stage``'s runs that may still be alive (heartbeat recent,
    process alive when it ran on this machine)."""
    now = time.time() if now is None else now
    me = socket.gethostname()
    live = set()
    for run_id, host, pid, hb in conn.execute(
            "SELECT run_id, hostname, pid, heartbeat_at FROM runs "
            "WHERE stage = ? AND outcome = 'running'", (stage,)):
        if hb is None or hb < now - stale_after:
            continue
        if host == me and not runs.pid_alive(pid):
            continue
        live.add(f"{host}:{pid}:{run_id}")
    return live
