"""The identity columns of images: hashes (backfill) and duplicate groups (dedupe), their SQL."""

from __future__ import annotations

import json

import numpy as np

from ..files import edgehash
from . import placeholders, runs
from .meta import get_meta, set_meta
from .sqlite import sqlite3

# Saved images whose hashes are missing (kept originals, raws, adopted files,
# saved before hashing existed, or before edge hashes: schema v17), in image_id order
# from a cursor: a rowid range scan, so one backfill reads the table once however
# often it is resumed.
_TO_HASH = """
SELECT image_id, file_path FROM images
 WHERE image_id > ? AND status = 'success' AND file_path IS NOT NULL
   AND (phash IS NULL OR edge_hashes IS NULL)
 ORDER BY image_id LIMIT ?
"""
_COUNT_TO_HASH = ("SELECT count(*) FROM images WHERE status = 'success' "
                  "AND file_path IS NOT NULL AND (phash IS NULL OR edge_hashes IS NULL)")
_SET = ("UPDATE images SET phash = ?, dhash = ?, edge_hashes = ? "
        "WHERE image_id = ? AND file_path = ?")
CHUNK = 500  # images per backfill transaction: a kill redoes at most this many
CURSOR_KEY = "hash_cursor"  # last image_id a killed backfill committed


def count_to_hash(conn: sqlite3.Connection) -> int:
    return int(conn.execute(_COUNT_TO_HASH).fetchone()[0])


def to_hash(conn: sqlite3.Connection, after: int, n: int) -> list[tuple[int, str]]:
    return [(int(r[0]), str(r[1])) for r in conn.execute(_TO_HASH, (after, n))]


def save_hashes(conn: sqlite3.Connection, rows: list[tuple[int, str, int, int, bytes]]) -> int:
    """(image_id, file_path, phash, dhash, edge hashes) rows, inside the caller's transaction; a row
    whose file changed since it was read (re-downloaded) is left alone."""
    cur = conn.executemany(_SET, [(p, d, e, i, f) for i, f, p, d, e in rows])
    return max(cur.rowcount, 0)


def cursor(conn: sqlite3.Connection) -> int:
    return int(get_meta(conn, CURSOR_KEY) or 0)


def set_cursor(conn: sqlite3.Connection, image_id: int) -> None:
    set_meta(conn, CURSOR_KEY, str(image_id))


# -- duplicate groups (dedupe) -------------------------------------------------------------
# Saved images sharing their bytes: one sort of the saved rows by sha256 and host
# (SQLite's sorter spills to temp files, so memory stays flat); only the repeats
# come back, with how many images of their own host share the bytes.
_DUPLICATES = """
SELECT image_id, host_id, sha256, n_host FROM (
  SELECT image_id, host_id, sha256, count(*) OVER w AS n, count(*) OVER wh AS n_host
    FROM images WHERE status = 'success' AND sha256 IS NOT NULL
  WINDOW w AS (PARTITION BY sha256), wh AS (PARTITION BY sha256, host_id))
 WHERE n > 1
"""
_HASHED = ("SELECT image_id, phash, host_id FROM images WHERE status = 'success' "
           "AND phash IS NOT NULL ORDER BY image_id")
_EDGES = ("SELECT image_id, edge_hashes FROM images WHERE status = 'success' "
          "AND phash IS NOT NULL AND edge_hashes IS NOT NULL ORDER BY image_id")
_GROUPED = ("SELECT image_id, dup_group, near_group FROM images "
            "WHERE dup_group IS NOT NULL OR near_group IS NOT NULL")
_SET_GROUPS = "UPDATE images SET dup_group = ?, near_group = ? WHERE image_id = ?"
FETCH = 100_000  # rows per fetch while reading hashes


def duplicates(conn: sqlite3.Connection) -> list[tuple[int, int, str, int]]:
    """(image_id, host_id, sha256, images of that host with it) of every saved image
    whose sha256 another saved image shares."""
    return conn.execute(_DUPLICATES).fetchall()


def hashed(conn: sqlite3.Connection) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image_ids, phashes, host_ids) of the saved images that have a pHash, as int64
    arrays in image_id order (24 bytes per image: 1.2 GB at 50M)."""
    parts = []
    cur = conn.execute(_HASHED)
    while rows := cur.fetchmany(FETCH):
        parts.append(np.array(rows, dtype=np.int64).reshape(-1, 3))
    block = np.concatenate(parts) if parts else np.empty((0, 3), np.int64)
    return block[:, 0].copy(), block[:, 1].copy(), block[:, 2].copy()


def edge_hashed(conn: sqlite3.Connection) -> tuple[np.ndarray, np.ndarray]:
    """(image_ids, edge hashes as edgehash.unpack gives them) of the saved images that
    have both, in image_id order (72 bytes per image: 3.6 GB at 50M). A value of
    another length (written by hand) is left out."""
    ids, parts = [np.empty(0, np.int64)], [edgehash.unpack([])]
    cur = conn.execute(_EDGES)
    while rows := cur.fetchmany(FETCH):
        ok = [r for r in rows if len(r[1]) == edgehash.SIZE]
        ids.append(np.fromiter((r[0] for r in ok), np.int64, len(ok)))
        parts.append(edgehash.unpack([r[1] for r in ok]))
    return np.concatenate(ids), np.concatenate(parts)


def sha256_of(conn: sqlite3.Connection, image_id: int) -> str | None:
    row = conn.execute("SELECT sha256 FROM images WHERE image_id = ?", (image_id,)).fetchone()
    return row[0] if row else None


def grouped(conn: sqlite3.Connection) -> dict[int, tuple[int | None, int | None]]:
    """The groups as stored: {image_id: (dup_group, near_group)} of grouped images."""
    return {r[0]: (r[1], r[2]) for r in conn.execute(_GROUPED)}


def save_groups(conn: sqlite3.Connection,
                rows: list[tuple[int | None, int | None, int]]) -> None:
    """(dup_group, near_group, image_id) rows, inside the caller's transaction."""
    conn.executemany(_SET_GROUPS, rows)


DEDUPE_STATS = "dedupe_stats"  # meta: the last dedupe's counts, for the report


def report(conn: sqlite3.Connection) -> dict:
    """The report's identity section from small reads: the last dedupe's counts (meta),
    requests saved by one fetch per URL (runs), placeholders per host (their table)."""
    stats = get_meta(conn, DEDUPE_STATS)
    try:
        found = placeholders.by_host(conn)
    except sqlite3.OperationalError:  # a database from before the table (never migrated here)
        found = []
    return {
        "dedupe": json.loads(stats) if stats else None,
        "requests_saved": runs.requests_saved(conn),
        "placeholders": [{"host": h, "sha256": sha, "phash": None if ph is None else
                          f"{ph & ((1 << 64) - 1):016x}", "images": n, "example": path}
                         for h, sha, ph, n, path in found],
    }
