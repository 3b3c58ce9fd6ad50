"""Upkeep SQL over images: verify's walk, requeueing, revisiting failures, raws, derive."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from .sqlite import sqlite3

# Two walks, each an index seek on images_checked (partial on status = 'success'):
# never-checked images (last_checked IS NULL, an equality on the index, then rowid
# order), then those checked before the cutoff, oldest first. One query with an OR
# would sort, and a filter instead of a range would walk the whole index once the
# pass is nearly done. ``shard``: image_id % :n = :k (a verify array's task). A task
# reads a frozen database, where a checked row does not move to the end: it resumes
# the second walk after a position (last_checked, image_id) instead ({pos}).
_COLUMNS = "image_id, gbif_id, file_path, file_size, sha256, error_type, last_checked"
_NEVER = (f"SELECT {_COLUMNS} FROM images INDEXED BY images_checked "
          "WHERE status = 'success' AND last_checked IS NULL AND image_id > :after {shard} "
          "ORDER BY image_id LIMIT :limit")
_OLDER = (f"SELECT {_COLUMNS} FROM images INDEXED BY images_checked "
          "WHERE status = 'success' AND last_checked < :cutoff {shard} {pos} "
          "ORDER BY last_checked, image_id LIMIT :limit")
_SHARD = "AND image_id % :n = :k"
_POS = "AND (last_checked, image_id) > (:lc, :lid)"


@dataclass(frozen=True)
class Saved:
    """A saved image as verify reads it."""

    image_id: int
    gbif_id: int
    file_path: str | None
    file_size: int | None
    sha256: str | None
    error_type: str | None  # a flag (raw_unprocessed, legacy_unverified_index) or NULL
    last_checked: float | None


def to_check(conn: sqlite3.Connection, cutoff: float, limit: int, *, after: int = -1,
             shard: tuple[int, int] | None = None,
             older_after: tuple[float, int] | None = None) -> list[Saved]:
    """The next ``limit`` saved images due a check: never checked (image_id above
    ``after``) first, then last checked before ``cutoff``, oldest first (after the
    position ``older_after``, which also skips the never-checked: they came first)."""
    cond = _SHARD if shard else ""
    args = {"after": after, "cutoff": cutoff, "limit": limit,
            "k": shard[0] - 1 if shard else 0, "n": shard[1] if shard else 1,
            "lc": older_after[0] if older_after else 0.0,
            "lid": older_after[1] if older_after else 0}
    rows = [] if older_after else conn.execute(_NEVER.format(shard=cond), args).fetchall()
    if len(rows) < limit:
        args["limit"] = limit - len(rows)
        rows += conn.execute(_OLDER.format(shard=cond, pos=_POS if older_after else ""),
                             args).fetchall()
    return [Saved(*r) for r in rows]


def mark_checked(conn: sqlite3.Connection, image_ids: Iterable[int], now: float) -> int:
    """Record a sound check (inside the caller's transaction). Only rows still saved:
    an image requeued meanwhile keeps its new state."""
    cur = conn.execute("UPDATE images SET last_checked = ? WHERE status = 'success' "
                       "AND image_id IN (SELECT value FROM json_each(?))",
                       (now, json.dumps(list(image_ids))))
    return max(cur.rowcount, 0)


def requeue(conn: sqlite3.Connection, bad: Iterable[tuple[int, str, str]], now: float) -> int:
    """Saved images whose file is gone or unsound go back to pending with a fresh
    attempts budget; error_type/error_detail say why (inside the caller's transaction;
    the caller rolls the gbifIDs up). ``bad``: (image_id, error_type, detail)."""
    cur = conn.executemany(
        "UPDATE images SET status = 'pending', attempts = 0, next_attempt_at = 0, "
        "error_type = ?, error_detail = ?, http_status = NULL, file_path = NULL, "
        "file_size = NULL, sha256 = NULL, width = NULL, height = NULL, phash = NULL, "
        "dhash = NULL, edge_hashes = NULL, last_checked = ? "
        "WHERE image_id = ? AND status = 'success' "
        "AND claimed_by IS NULL",
        [(etype, detail[:2000], now, image_id) for image_id, etype, detail in bad])
    return max(cur.rowcount, 0)


def oldest_check(conn: sqlite3.Connection) -> tuple[bool, float | None]:
    """(any saved image never checked, the oldest check among the others): two
    index seeks, for the report."""
    never = conn.execute("SELECT 1 FROM images INDEXED BY images_checked WHERE "
                         "status = 'success' AND last_checked IS NULL LIMIT 1").fetchone()
    oldest = conn.execute("SELECT min(last_checked) FROM images INDEXED BY images_checked "
                          "WHERE status = 'success' AND last_checked IS NOT NULL").fetchone()
    return never is not None, oldest[0] if oldest else None


# --- revisiting permanent failures (upkeep/revisit.py) --------------------------------
# images_failed (partial on failed_permanent): per host, oldest last attempt first.
_FAILED_HOSTS = ("SELECT host_id, sum(n) FROM image_tally WHERE status = 'failed_permanent' "
                 "AND n > 0 GROUP BY host_id")
_DUE_COUNT = ("SELECT count(*) FROM (SELECT 1 FROM images INDEXED BY images_failed "
              "WHERE status = 'failed_permanent' AND host_id = ? AND last_attempt_at < ? "
              "LIMIT ?)")
_DUE = ("SELECT image_id FROM images INDEXED BY images_failed "
        "WHERE status = 'failed_permanent' AND host_id = ? AND last_attempt_at < ? "
        "ORDER BY last_attempt_at LIMIT ?")
# The outcome a row's new one replaces, for prev_error (a revisit, a rescue from GBIF's
# image cache): "http_404 (HTTP 404) at 2026-01-05 10:12:00: HTTP 404: Not Found".
PREV_ERROR_SQL = """substr(error_type || coalesce(' (HTTP ' || http_status || ')', '')
                           || ' at ' || datetime(last_attempt_at, 'unixepoch')
                           || coalesce(': ' || error_detail, ''), 1, 2000)"""
# A fresh attempts budget, due at its old attempt's time (so the claim, oldest due first,
# takes a host's oldest failures first); the outcome it replaces is kept in prev_error.
_REOPEN = f"""
UPDATE images SET status = 'pending', attempts = 0, next_attempt_at = last_attempt_at,
       prev_error = {PREV_ERROR_SQL},
       error_type = NULL, error_detail = NULL, http_status = NULL
 WHERE image_id IN (SELECT value FROM json_each(:ids)) AND status = 'failed_permanent'
   AND claimed_by IS NULL
RETURNING gbif_id
"""


def failed_hosts(conn: sqlite3.Connection) -> dict[int, int]:
    """host_id -> permanent failures, from the counters (no scan of images)."""
    return dict(conn.execute(_FAILED_HOSTS).fetchall())


def due_for_revisit(conn: sqlite3.Connection, host_id: int, before: float, cap: int) -> int:
    """A host's permanent failures last tried before ``before``, counted up to ``cap``."""
    return conn.execute(_DUE_COUNT, (host_id, before, cap)).fetchone()[0]


def oldest_failed(conn: sqlite3.Connection, host_id: int, before: float, n: int) -> list[int]:
    return [r[0] for r in conn.execute(_DUE, (host_id, before, n))]


def reopen(conn: sqlite3.Connection, image_ids: list[int]) -> list[int]:
    """Reopen these permanent failures (inside the caller's transaction); returns the
    gbifIDs of those reopened, for the roll-up."""
    return [r[0] for r in conn.execute(_REOPEN, {"ids": json.dumps(image_ids)}).fetchall()]


# --- raw conversion (upkeep/convert.py) --------------------------------------------
# Raws are few: a walk by rowid from a cursor reads the table once per pass, chunk by
# chunk, and the counters say at once when there is nothing to do.
_RAWS = ("SELECT image_id, gbif_id, image_no, file_path FROM images WHERE image_id > ? "
         "AND status = 'success' AND error_type = 'raw_unprocessed' AND file_path IS NOT NULL "
         "ORDER BY image_id LIMIT ?")
# Only rows still as read (a raw at that path): a re-download meanwhile wins.
_CONVERTED = """
UPDATE images SET error_type = NULL, error_detail = :detail, file_path = :path,
       file_size = :size, sha256 = :sha, width = :w, height = :h, phash = :ph, dhash = :dh,
       edge_hashes = :edges, last_checked = NULL
 WHERE image_id = :id AND status = 'success' AND error_type = 'raw_unprocessed'
   AND file_path = :raw AND claimed_by IS NULL
RETURNING gbif_id
"""
_UNCONVERTIBLE = """
UPDATE images SET status = 'failed_permanent', error_type = :etype, error_detail = :detail,
       file_path = NULL, file_size = NULL, sha256 = NULL, width = NULL, height = NULL,
       phash = NULL, dhash = NULL, edge_hashes = NULL, last_checked = NULL
 WHERE image_id = :id AND status = 'success' AND error_type = 'raw_unprocessed'
   AND file_path = :raw AND claimed_by IS NULL
RETURNING gbif_id
"""


def count_raws(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT coalesce(sum(n), 0) FROM image_tally WHERE status = 'success' "
                        "AND error_type = 'raw_unprocessed'").fetchone()[0]


def raws_after(conn: sqlite3.Connection, after: int, n: int) -> list[tuple[int, int, int, str]]:
    """(image_id, gbif_id, image_no, file_path) of the next raws kept as is."""
    return conn.execute(_RAWS, (after, n)).fetchall()


def record_converted(conn: sqlite3.Connection, rows: list[tuple]) -> list[int]:
    """(image_id, raw path, new path, size, sha256, width, height, phash, dhash, edge
    hashes, detail) rows, inside the caller's transaction; returns the gbifIDs of the rows
    changed."""
    out = []
    for i, raw, path, size, sha, w, h, ph, dh, edges, detail in rows:
        out += [r[0] for r in conn.execute(_CONVERTED, {
            "id": i, "raw": raw, "path": path, "size": size, "sha": sha, "w": w, "h": h,
            "ph": ph, "dh": dh, "edges": edges, "detail": detail})]
    return out


def record_unconvertible(conn: sqlite3.Connection, rows: list[tuple[int, str, str, str]]
                         ) -> list[int]:
    """(image_id, raw path, error_type, detail): a raw that yields no usable image fails
    for good (inside the caller's transaction); returns the gbifIDs changed."""
    out = []
    for i, raw, etype, detail in rows:
        out += [r[0] for r in conn.execute(_UNCONVERTIBLE, {
            "id": i, "raw": raw, "etype": etype, "detail": detail[:2000]})]
    return out


# --- re-derive (upkeep/derive.py) ------------------------------------------------------
_SAVED = ("SELECT image_id, gbif_id, image_no, file_path, error_type FROM images "
          "WHERE image_id > ? AND status = 'success' AND file_path IS NOT NULL "
          "ORDER BY image_id LIMIT ?")


def count_saved(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT coalesce(sum(n), 0) FROM image_tally "
                        "WHERE status = 'success'").fetchone()[0]


def saved_after(conn: sqlite3.Connection, after: int, n: int) -> list[tuple]:
    """(image_id, gbif_id, image_no, file_path, error_type) of the next saved images
    (a walk by rowid: one pass reads the table once)."""
    return conn.execute(_SAVED, (after, n)).fetchall()
