"""The url_group column of images: which rows share their first candidate URL, its SQL."""

from __future__ import annotations

import json

from .meta import get_meta, set_meta
from .sqlite import sqlite3

# An image's first (best) candidate URL: the normalised URL the downloader fetches
# first and download/shared.py keys its one fetch per URL by (urls is newline-joined).
PRIMARY_URL = "substr(urls, 1, instr(urls || char(10), char(10)) - 1)"
# meta: 'done' once every ingested row has its url_group (ingest/url_groups.py)
META_DONE = "url_groups"

_CHUNK = f"SELECT image_id, {PRIMARY_URL} FROM images WHERE image_id > ? ORDER BY image_id LIMIT ?"
_OF_IDS = (f"SELECT image_id, {PRIMARY_URL} FROM images "
           "WHERE image_id IN (SELECT value FROM json_each(?))")
_SET = "UPDATE images SET url_group = ?1 WHERE image_id = ?2 AND url_group IS NOT ?1"


def done(conn: sqlite3.Connection) -> bool:
    return get_meta(conn, META_DONE) == "done"


def mark_done(conn: sqlite3.Connection) -> None:
    """Inside the caller's transaction."""
    set_meta(conn, META_DONE, "done")


def has_column(conn: sqlite3.Connection, schema: str = "main") -> bool:
    """False for a database from before url_group (an unmigrated, read-only main DB)."""
    return "url_group" in {r[1] for r in conn.execute(f"PRAGMA {schema}.table_info(images)")}


def primary_urls(conn: sqlite3.Connection, after: int, n: int) -> list[tuple[int, str]]:
    """(image_id, first candidate URL) of the next n rows after image_id ``after``."""
    return conn.execute(_CHUNK, (after, n)).fetchall()


def primary_urls_of(conn: sqlite3.Connection, ids: list[int]) -> list[tuple[int, str]]:
    return conn.execute(_OF_IDS, (json.dumps(ids),)).fetchall()


def save(conn: sqlite3.Connection, rows: list[tuple[int, int]]) -> None:
    """(url_group, image_id) pairs (inside the caller's transaction); unchanged rows
    are not rewritten, so a re-run after a kill writes only what it had not."""
    conn.executemany(_SET, rows)


def count(conn: sqlite3.Connection) -> tuple[int, int]:
    """(groups, images in them), from the small partial index."""
    row = conn.execute("SELECT count(DISTINCT url_group), count(*) FROM images "
                       "INDEXED BY images_url_group WHERE url_group IS NOT NULL").fetchone()
    return int(row[0]), int(row[1])
