"""The identity columns of images (phash, dhash): the hash backfill's reads and writes."""

from __future__ import annotations

from .meta import get_meta, set_meta
from .sqlite import sqlite3

# Saved images whose hashes are missing (kept originals, raws, adopted files,
# saved before hashing existed), in image_id order from a cursor: a rowid range
# scan, so one backfill reads the table once however often it is resumed.
_TO_HASH = """
SELECT image_id, file_path FROM images
 WHERE image_id > ? AND status = 'success' AND file_path IS NOT NULL AND phash IS NULL
 ORDER BY image_id LIMIT ?
"""
_COUNT_TO_HASH = ("SELECT count(*) FROM images WHERE status = 'success' "
                  "AND file_path IS NOT NULL AND phash IS NULL")
_SET = "UPDATE images SET phash = ?, dhash = ? WHERE image_id = ? AND file_path = ?"
CHUNK = 500  # images per backfill transaction: a kill redoes at most this many
CURSOR_KEY = "hash_cursor"  # last image_id a killed backfill committed


def count_to_hash(conn: sqlite3.Connection) -> int:
    return int(conn.execute(_COUNT_TO_HASH).fetchone()[0])


def to_hash(conn: sqlite3.Connection, after: int, n: int) -> list[tuple[int, str]]:
    return [(int(r[0]), str(r[1])) for r in conn.execute(_TO_HASH, (after, n))]


def save_hashes(conn: sqlite3.Connection, rows: list[tuple[int, str, int, int]]) -> int:
    """(image_id, file_path, phash, dhash) rows, inside the caller's transaction; a row
    whose file changed since it was read (re-downloaded) is left alone."""
    cur = conn.executemany(_SET, [(p, d, i, f) for i, f, p, d in rows])
    return max(cur.rowcount, 0)


def cursor(conn: sqlite3.Connection) -> int:
    return int(get_meta(conn, CURSOR_KEY) or 0)


def set_cursor(conn: sqlite3.Connection, image_id: int) -> None:
    set_meta(conn, CURSOR_KEY, str(image_id))
