"""Merge: fold finished array tasks' result databases into the main database, then remove them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ..db import array_plans, claims, hosts
from ..db.connection import open_readonly, readonly_uri, remove_database, transaction
from ..db.meta import get_meta
from ..db.sqlite import sqlite3
from ..db.tallies import IMAGE_TRIGGERS, merge_sql
from ..errors import DatabaseError
from ..progress import say
from ..states import ALIVE_WINDOW
from .plan import task_dbs, tasks_dir_for

# A task whose heartbeat is older than this (and not provably dead on this
# machine) no longer counts as running. The downloader beats every few seconds.

# Only rows the task finished: attempted, and not held by a claim (a dead task's
# in-flight image, or a success whose file may not have reached its name: those
# stay as the main DB has them and the next run adopts or refetches the file).
_DONE = "t.last_attempt_at IS NOT NULL AND t.claimed_by IS NULL"
_IMAGES = f"""
UPDATE images SET status = t.status, attempts = t.attempts, next_attempt_at = t.next_attempt_at,
       http_status = t.http_status, error_type = t.error_type, file_size = t.file_size,
       width = t.width, height = t.height, last_attempt_at = t.last_attempt_at,
       file_path = t.file_path, sha256 = t.sha256, error_detail = t.error_detail,
       phash = t.phash, dhash = t.dhash, claimed_by = NULL
  FROM task.images AS t
 WHERE t.image_id = images.image_id AND {_DONE}
   AND t.last_attempt_at IS NOT images.last_attempt_at
"""
_RUNS = """
INSERT INTO runs(stage, started_at, finished_at, heartbeat_at, hostname, pid, argv, outcome,
                 counts, message, shard)
SELECT stage, started_at, finished_at, heartbeat_at, hostname, pid, argv,
       CASE outcome WHEN 'running' THEN 'crashed' ELSE outcome END, counts, message, ?
  FROM task.runs ORDER BY run_id
"""
# The counters for the rows the merge changes, computed in bulk from the task's
# rows before the update (the per-row triggers cost 40% of a 10M-row merge; they
# are dropped and re-created inside the same transaction, so no one sees a gap).
_CHANGED = (f"FROM task.images AS t JOIN images AS i ON i.image_id = t.image_id "
            f"WHERE {_DONE} AND t.last_attempt_at IS NOT i.last_attempt_at")
_TALLIES = merge_sql(_CHANGED, old="i", new="t", unchanged=("host_id",))  # _IMAGES keeps it


@dataclass
class MergeStats:
    tasks: int = 0
    images: int = 0
    seconds: float = 0.0
    merged: list[str] = field(default_factory=list)


def task_liveness(path: Path, now: float | None = None) -> str | None:
    """Why the task may still be writing (a run a downloader would not recover:
    recent heartbeat, and alive if it ran on this machine), or None."""
    conn = open_readonly(path)
    try:
        live = claims.live_tokens(conn, stale_after=ALIVE_WINDOW, now=now)
    finally:
        conn.close()
    if not live:
        return None
    host, pid, _run = sorted(live)[0].rsplit(":", 2)
    return f"run on {host} pid {pid}, heartbeat within {ALIVE_WINDOW / 60:.0f} minutes"


def refuse_if_tasks_running(db: Path, what: str) -> None:
    for path in task_dbs(tasks_dir_for(db)):
        alive = task_liveness(path)
        if alive:
            raise DatabaseError(
                f"array task {path.name} may still be writing ({alive}); {what} would race "
                "with it. Wait for the array to finish (or qdel/scancel it), or pass --force")


def merge_tasks(conn: sqlite3.Connection, db: Path, *, force: bool = False,
                out: TextIO | None = None) -> MergeStats:
    """Fold every task database beside ``db`` into it, one transaction per task;
    each merged task database is deleted. Idempotent: a kill between the commit
    and the delete merges the same rows again to the same values. gbifID
    statuses are finalize's job (it merges first, then rolls everything up)."""
    t0 = time.monotonic()
    st = MergeStats()
    paths = task_dbs(tasks_dir_for(db))
    if not paths:
        return st
    if not force:
        refuse_if_tasks_running(db, "merging")
    build = get_meta(conn, "build_id")
    for path in paths:
        t1 = time.monotonic()
        conn.execute("ATTACH DATABASE ? AS task", (readonly_uri(path),))
        try:
            task_build = conn.execute(
                "SELECT value FROM task.meta WHERE key = 'build_id'").fetchone()
            if (task_build[0] if task_build else None) != build:
                raise DatabaseError(f"{path} comes from another build of {db} (it was rebuilt "
                                    "with --reset); its image ids mean nothing here: delete it")
            shard = conn.execute(
                "SELECT value FROM task.meta WHERE key = 'task_shard'").fetchone()
            with transaction(conn):
                for stmt in _TALLIES:
                    conn.execute(stmt)
                for name, _ in IMAGE_TRIGGERS:
                    conn.execute(f"DROP TRIGGER {name}")
                n = conn.execute(_IMAGES).rowcount
                for _, ddl in IMAGE_TRIGGERS:
                    conn.execute(ddl)
                hosts.merge_from(conn, "task")
                array_plans.carry(conn, "task")  # tasks still queued keep their share
                conn.execute(_RUNS, (shard[0] if shard else None,))
        finally:
            conn.execute("DETACH DATABASE task")
        remove_database(path, lock_file=True)
        st.tasks += 1
        st.images += max(n, 0)
        st.merged.append(path.name)
        say(f"merge: {path.name}: {n:,} image results in {time.monotonic() - t1:.1f}s", out)
    st.seconds = time.monotonic() - t0
    return st
