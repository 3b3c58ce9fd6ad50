"""Canvas rows: a manifest's other canvases become images of its gbifID (queued in array tasks)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from . import gbif_ids, hosts
from .sqlite import sqlite3

# An array task's database holds only its share of a gbifID's rows, and other tasks
# may add canvases to the same gbifID: numbers given there could clash at the merge
# (and name the same file). A task queues what it found here; the merge adds the rows
# to the main database with its fresh image_ids and numbers, due for the next run.
DDL = """CREATE TABLE IF NOT EXISTS canvas_queue (
    gbif_id        INTEGER NOT NULL,
    image_key      TEXT    NOT NULL,
    host           TEXT    NOT NULL,
    urls           TEXT    NOT NULL,
    attribution_id INTEGER,
    UNIQUE (gbif_id, image_key)
)"""  # rowid: the order found in, so canvases keep their manifest's order

# (key, host, urls): web/iiif.CanvasImage is one
Canvas = tuple[str, str, Sequence[str]]

_PARENT = "SELECT gbif_id, attribution_id FROM images WHERE image_id = ?"
# a few rows per gbifID, through the (gbif_id, image_no) index
_OF_GBIF = "SELECT image_key, image_no FROM images WHERE gbif_id = ?"
_INSERT = ("INSERT INTO images(gbif_id, image_no, host_id, attribution_id, image_key, urls) "
           "VALUES (?, ?, ?, ?, ?, ?)")


def add(conn: sqlite3.Connection, parent_id: int,
        canvases: Iterable[Canvas]) -> list[tuple[int, str]]:
    """New pending images for the canvases the parent image's gbifID does not have
    yet (by image_key: a second fetch of the manifest adds nothing), numbered after
    its last image, with the parent's attribution. Inside the caller's transaction;
    returns (host_id, host) of each row added."""
    row = conn.execute(_PARENT, (parent_id,)).fetchone()
    if row is None:
        return []
    return add_to_gbif(conn, row[0], row[1], canvases)


def add_to_gbif(conn: sqlite3.Connection, gbif_id: int, attribution_id: int | None,
                canvases: Iterable[Canvas]) -> list[tuple[int, str]]:
    have = dict(conn.execute(_OF_GBIF, (gbif_id,)).fetchall())
    last = max(have.values(), default=0)
    added: list[tuple[int, str]] = []
    for key, host, urls in canvases:
        if key in have:
            continue
        last += 1
        have[key] = last
        host_id = hosts.ensure(conn, host)
        conn.execute(_INSERT, (gbif_id, last, host_id, attribution_id, key, "\n".join(urls)))
        added.append((host_id, host))
    if added:
        gbif_ids.add_images(conn, gbif_id, len(added))
        per_host: dict[int, int] = {}
        for host_id, _ in added:
            per_host[host_id] = per_host.get(host_id, 0) + 1
        hosts.count_images(conn, [(n, h) for h, n in per_host.items()])
    return added


def queue(conn: sqlite3.Connection, parent_id: int, canvases: Iterable[Canvas]) -> int:
    """An array task's find, kept for the merge (inside the caller's transaction);
    returns how many were new to the queue."""
    row = conn.execute(_PARENT, (parent_id,)).fetchone()
    if row is None:
        return 0
    n = 0
    for key, host, urls in canvases:
        n += conn.execute("INSERT OR IGNORE INTO canvas_queue(gbif_id, image_key, host, urls, "
                          "attribution_id) VALUES (?, ?, ?, ?, ?)",
                          (row[0], key, host, "\n".join(urls), row[1])).rowcount
    return n


def merge_from(conn: sqlite3.Connection, schema: str) -> int:
    """Add an attached task database's queued canvases to this database's images
    (with the per-row counter triggers in place); returns the rows added. A merge
    run twice adds nothing the second time."""
    if conn.execute(f"SELECT count(*) FROM {schema}.sqlite_master WHERE type = 'table' "
                    "AND name = 'canvas_queue'").fetchone()[0] == 0:
        return 0  # a task database from before canvases were queued
    by_gbif: dict[tuple[int, int | None], list[Canvas]] = {}
    for gbif_id, key, host, urls, attribution_id in conn.execute(
            f"SELECT gbif_id, image_key, host, urls, attribution_id FROM {schema}.canvas_queue "
            "ORDER BY rowid"):
        by_gbif.setdefault((gbif_id, attribution_id), []).append((key, host, urls.split("\n")))
    return sum(len(add_to_gbif(conn, g, a, cs)) for (g, a), cs in by_gbif.items())
