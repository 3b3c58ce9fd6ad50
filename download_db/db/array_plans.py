"""The array_plan table: each job array's host -> task plan, fixed when made and kept by merges."""

from __future__ import annotations

import time
from collections.abc import Iterable

from .sqlite import sqlite3

# One row per piece of work: a host (or one part of a split host: image_id %
# parts = part) and the task that owns it, for the array of n_tasks tasks. A
# plan is made once per task count and never recomputed, so a merge between
# tasks (which changes the work left) cannot move a host away from a task that
# has not started yet. Small: a row per host, a few more for split hosts.
DDL = """CREATE TABLE IF NOT EXISTS array_plan (
    n_tasks    INTEGER NOT NULL,
    host_id    INTEGER NOT NULL,
    part       INTEGER NOT NULL,
    parts      INTEGER NOT NULL,
    task       INTEGER NOT NULL,
    work       INTEGER NOT NULL,
    array_id   TEXT    NOT NULL,
    created_at REAL    NOT NULL,
    PRIMARY KEY (n_tasks, host_id, part)
) WITHOUT ROWID"""

_COLS = "n_tasks, host_id, part, parts, task, work, array_id, created_at"


def has_table(conn: sqlite3.Connection, schema: str = "main") -> bool:
    """False for a database made before plans were stored (nothing to read or carry)."""
    return conn.execute(f"SELECT count(*) FROM {schema}.sqlite_master "
                        "WHERE type = 'table' AND name = 'array_plan'").fetchone()[0] == 1


def load(conn: sqlite3.Connection, n_tasks: int,
         schema: str = "main") -> tuple[str, list[tuple[int, int, int, int, int]]] | None:
    """The stored plan for an array of ``n_tasks``: (array_id, [(host_id, part, parts,
    task, work)]), or None."""
    if not has_table(conn, schema):
        return None
    rows = conn.execute(f"SELECT array_id, host_id, part, parts, task, work "
                        f"FROM {schema}.array_plan WHERE n_tasks = ? ORDER BY host_id, part",
                        (n_tasks,)).fetchall()
    if not rows:
        return None
    return rows[0][0], [tuple(r[1:]) for r in rows]  # type: ignore[misc]


def save(conn: sqlite3.Connection, array_id: str, n_tasks: int,
         rows: Iterable[tuple[int, int, int, int, int]], now: float | None = None) -> None:
    """Store a plan (inside the caller's transaction): (host_id, part, parts, task, work)."""
    now = time.time() if now is None else now
    conn.executemany(f"INSERT INTO array_plan({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     [(n_tasks, *r, array_id, now) for r in rows])


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
        n += conn.execute(f"INSERT INTO main.array_plan({_COLS}) SELECT {_COLS} "
                          f"FROM {schema}.array_plan WHERE n_tasks = ?", (n_tasks,)).rowcount
    return n


def arrays(conn: sqlite3.Connection) -> list[tuple[str, int, float, int]]:
    """The stored plans for the report: (array_id, n_tasks, created_at, hosts)."""
    if not has_table(conn):
        return []
    return conn.execute("SELECT array_id, n_tasks, min(created_at), count(DISTINCT host_id) "
                        "FROM array_plan GROUP BY n_tasks ORDER BY n_tasks").fetchall()
