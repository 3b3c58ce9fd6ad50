"""The array_plan table: each job array's host -> task plan, fixed when made and kept by merges."""

from __future__ import annotations

import time
from collections.abc import Iterable

from .sqlite import sqlite3

# One row per piece of work: a host (or one part of a split host: split_by %
# parts = part) and the task that owns it, for the array of n_tasks tasks. A
# plan is made once per task count and never recomputed, so a merge between
# tasks (which changes the work left) cannot move a host away from a task that
# has not started yet. Small: a row per host, a few more for split hosts.
# split_by names what a split host's images are divided by (SPLIT_SQL), the same
# in every row of a plan: plans made before url_group divide by image_id and keep
# doing so, so a task starting late takes exactly what its plan gave it.
DDL = """CREATE TABLE IF NOT EXISTS array_plan (
    n_tasks    INTEGER NOT NULL,
    host_id    INTEGER NOT NULL,
    part       INTEGER NOT NULL,
    parts      INTEGER NOT NULL,
    task       INTEGER NOT NULL,
    work       INTEGER NOT NULL,
    array_id   TEXT    NOT NULL,
    created_at REAL    NOT NULL,
    split_by   TEXT    NOT NULL DEFAULT 'image_id',
    PRIMARY KEY (n_tasks, host_id, part)
) WITHOUT ROWID"""

BY_IMAGE = "image_id"
# the images of one shared URL (db/url_groups.py) fall in one part, so one task
# fetches it once for all of them
BY_URL_GROUP = "url_group"
SPLIT_SQL = {BY_IMAGE: "image_id", BY_URL_GROUP: "coalesce(url_group, image_id)"}

_BASE_COLS = "n_tasks, host_id, part, parts, task, work, array_id, created_at"
_COLS = _BASE_COLS + ", split_by"


def _has_split_by(conn: sqlite3.Connection, schema: str) -> bool:
    """False for a plan stored by a program from before split_by (it divided by image_id)."""
    return "split_by" in {r[1] for r in conn.execute(f"PRAGMA {schema}.table_info(array_plan)")}


def has_table(conn: sqlite3.Connection, schema: str = "main") -> bool:
    """False for a database made before plans were stored (nothing to read or carry)."""
    return conn.execute(f"SELECT count(*) FROM {schema}.sqlite_master "
                        "WHERE type = 'table' AND name = 'array_plan'").fetchone()[0] == 1


def load(conn: sqlite3.Connection, n_tasks: int, schema: str = "main"
         ) -> tuple[str, list[tuple[int, int, int, int, int]], str] | None:
    """The stored plan for an array of ``n_tasks``: (array_id, [(host_id, part, parts,
    task, work)], split_by), or None."""
    if not has_table(conn, schema):
        return None
    by = "split_by" if _has_split_by(conn, schema) else f"'{BY_IMAGE}'"
    rows = conn.execute(f"SELECT array_id, host_id, part, parts, task, work, {by} "
                        f"FROM {schema}.array_plan WHERE n_tasks = ? ORDER BY host_id, part",
                        (n_tasks,)).fetchall()
    if not rows:
        return None
    return rows[0][0], [tuple(r[1:6]) for r in rows], rows[0][6]  # type: ignore[misc]


def save(conn: sqlite3.Connection, array_id: str, n_tasks: int,
         rows: Iterable[tuple[int, int, int, int, int]], split_by: str = BY_IMAGE,
         now: float | None = None) -> None:
    """Store a plan (inside the caller's transaction): (host_id, part, parts, task, work)."""
    now = time.time() if now is None else now
    conn.executemany(f"INSERT INTO array_plan({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     [(n_tasks, *r, array_id, now, split_by) for r in rows])


def carry(conn: sqlite3.Connection, schema: str) -> int:
    """Copy the plans of an attached task database that this database lacks (inside
    the merge's transaction): after a merge, tasks still queued read their share
    from here. A plan already stored for that task count is kept as it is."""
    if not has_table(conn, schema):
        return 0
    counts = [r[0] for r in conn.execute(
        f"SELECT DISTINCT n_tasks FROM {schema}.array_plan EXCEPT "
        "SELECT DISTINCT n_tasks FROM main.array_plan")]
    n = 0
    for n_tasks in counts:
        # a task database from before split_by: its plan divided by image_id (the default)
        cols = _COLS if _has_split_by(conn, schema) else _BASE_COLS
        n += conn.execute(f"INSERT INTO main.array_plan({cols}) SELECT {cols} "
                          f"FROM {schema}.array_plan WHERE n_tasks = ?", (n_tasks,)).rowcount
    return n


def arrays(conn: sqlite3.Connection) -> list[tuple[str, int, float, int]]:
    """The stored plans for the report: (array_id, n_tasks, created_at, hosts)."""
    if not has_table(conn):
        return []
    return conn.execute("SELECT array_id, n_tasks, min(created_at), count(DISTINCT host_id) "
                        "FROM array_plan GROUP BY n_tasks ORDER BY n_tasks").fetchall()
