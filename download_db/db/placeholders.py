"""The placeholders table: a host's one picture for many URLs, and flagging its images."""

from __future__ import annotations

import json
import time

from ..states import PLACEHOLDER
from .sqlite import sqlite3

# One row per placeholder picture found on a host (dedupe/finalize): its content
# hash and pHash (later downloads refuse matches), how many images showed it, and
# the image whose file is kept as the example.
DDL = """CREATE TABLE IF NOT EXISTS placeholders (
    placeholder_id   INTEGER PRIMARY KEY,
    host_id          INTEGER NOT NULL,
    sha256           TEXT    NOT NULL,
    phash            INTEGER,
    n_images         INTEGER NOT NULL,
    example_image_id INTEGER NOT NULL,
    found_at         REAL    NOT NULL,
    UNIQUE (host_id, sha256)
)"""

# Two steps, so a kill never loses track of a file: the rows turn failed (file_path
# kept), then after the files are removed their paths are cleared.
_FLAG = f"""
UPDATE images SET status = 'failed_permanent', error_type = '{PLACEHOLDER}',
       error_detail = :detail, dup_group = NULL, near_group = NULL, next_attempt_at = 0
 WHERE image_id IN (SELECT value FROM json_each(:ids)) AND status = 'success'
RETURNING gbif_id
"""
_SAVE = """
INSERT INTO placeholders(host_id, sha256, phash, n_images, example_image_id, found_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT(host_id, sha256) DO UPDATE SET n_images = n_images + excluded.n_images
"""
# Flagged rows whose file is still on disk (a kill came between the two steps)
_LEFT = f"""
SELECT image_id, file_path FROM images
 WHERE error_type = '{PLACEHOLDER}' AND file_path IS NOT NULL
   AND image_id NOT IN (SELECT example_image_id FROM placeholders)
"""


def flag(conn: sqlite3.Connection, ids: list[int], detail: str) -> set[int]:
    """Turn these saved images into placeholder failures (inside the caller's
    transaction); returns their gbifIDs (for the roll-up)."""
    return {r[0] for r in conn.execute(_FLAG, {"ids": json.dumps(ids), "detail": detail})}


def save(conn: sqlite3.Connection, host_id: int, sha256: str, phash: int | None,
         n_images: int, example_image_id: int) -> None:
    conn.execute(_SAVE, (host_id, sha256, phash, n_images, example_image_id, time.time()))


def add_images(conn: sqlite3.Connection, host_id: int, sha256: str, n: int) -> None:
    """n more images showed a known placeholder (refused before they were saved)."""
    conn.execute("UPDATE placeholders SET n_images = n_images + ? "
                 "WHERE host_id = ? AND sha256 = ?", (n, host_id, sha256))


def files_left(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    return [(int(r[0]), str(r[1])) for r in conn.execute(_LEFT)]


def clear_files(conn: sqlite3.Connection, ids: list[int]) -> None:
    conn.execute("UPDATE images SET file_path = NULL, file_size = NULL "
                 "WHERE image_id IN (SELECT value FROM json_each(?))", (json.dumps(ids),))


def known(conn: sqlite3.Connection) -> tuple[set[str], list[int]]:
    """(sha256s, pHashes) of every placeholder found so far; empty on a database
    from before the table (a frozen main database is never migrated by readers)."""
    try:
        rows = conn.execute("SELECT sha256, phash FROM placeholders").fetchall()
    except sqlite3.OperationalError:
        return set(), []
    return {r[0] for r in rows}, [int(r[1]) for r in rows if r[1] is not None]


def by_host(conn: sqlite3.Connection) -> list[tuple]:
    """(host, sha256, phash, n_images, example file_path) for the report."""
    return conn.execute(
        "SELECT h.host, p.sha256, p.phash, p.n_images, i.file_path FROM placeholders p "
        "JOIN hosts h ON h.host_id = p.host_id "
        "LEFT JOIN images i ON i.image_id = p.example_image_id "
        "ORDER BY p.n_images DESC, h.host").fetchall()
