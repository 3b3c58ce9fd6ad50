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
_IMAGES = """
UPDATE images SET status = t.status, attempts = t.attempts, next_attempt_at = t.next_attempt_at,
       http_status = t.http_status, error_type = t.error_type, file_size = t.file_size,
       width = t.width, height = t.height, last_attempt_at = t.last_attempt_at,
       file_path = t.file_path, sha256 = t.sha256, error_detail = t.error_detail,
       phash = t.phash, dhash = t.dhash, fetched_url = {fetched_url}, claimed_by = NULL
  FROM {task}.images AS t
 WHERE t.image_id = images.image_id AND {done}
   AND t.last_attempt_at IS NOT images.last_attempt_at
"""
_RUNS = """
INSERT INTO runs(stage, started_at, finished_at, heartbeat_at, hostname, pid, argv, outcome,
                 counts, message, shard)
SELECT stage, started_at, finished_at, heartbeat_at, hostname, pid, argv,
       CASE outcome WHEN 'running' THEN 'crashed' ELSE outcome END, counts, message, ?
  FROM {task}.runs ORDER BY run_id
"""
# The counters for the rows the merge changes, computed in bulk from the task's
# rows before the update (the per-row triggers cost 40% of a 10M-row merge; they
# are dropped and re-created inside the same transaction, so no one sees a gap).
_CHANGED = ("FROM {task}.images AS t JOIN images AS i ON i.image_id = t.image_id "
            "WHERE {done} AND t.last_attempt_at IS NOT i.last_attempt_at")
# Task databases folded in per transaction (SQLite attaches at most 10): the tasks'
# rows interleave over the whole images table (hosts go to different tasks), so one
# transaction per task rewrote nearly every page once per task.
BATCH = 8
# Pages the merge may cache (KiB, negative = size): a batch's updates dirty most of
# the images table and the work-list index; a small cache spills them to the WAL
# over and over. Restored after the merge.
MERGE_CACHE_KIB = 1 << 20


def merge_statements(task: str, fetched_url: bool = True) -> list[str]:
    """The counters' change, then the image rows, for the task attached as ``task``.
    ``fetched_url``: the task's images have that column (a task database made before
    it existed and not resumed since has not; its rows merge with NULL)."""
    tallies = merge_sql(_CHANGED.format(task=task, done=_DONE), old="i", new="t",
                        unchanged=("host_id",))  # the image update keeps it
    return [*tallies, _IMAGES.format(task=task, done=_DONE,
                                      fetched_url="t.fetched_url" if fetched_url else "NULL")]


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
    cache = conn.execute("PRAGMA cache_size").fetchone()[0]
    conn.execute(f"PRAGMA cache_size = {-MERGE_CACHE_KIB}")
    try:
        for i in range(0, len(paths), BATCH):
            _merge_batch(conn, db, paths[i:i + BATCH], build, st, out)
    finally:
        conn.execute(f"PRAGMA cache_size = {cache}")
    st.seconds = time.monotonic() - t0
    return st


def _merge_batch(conn: sqlite3.Connection, db: Path, paths: list[Path], build: str | None,
                 st: MergeStats, out: TextIO | None) -> None:
    """Fold up to BATCH task databases in, in one transaction, then delete them."""
    names = [f"task{k}" for k in range(len(paths))]
    done: list[tuple[Path, int, float]] = []
    try:
        for name, path in zip(names, paths, strict=True):
            conn.execute(f"ATTACH DATABASE ? AS {name}", (readonly_uri(path),))
            task_build = conn.execute(
                f"SELECT value FROM {name}.meta WHERE key = 'build_id'").fetchone()
            if (task_build[0] if task_build else None) != build:
                raise DatabaseError(f"{path} comes from another build of {db} (it was rebuilt "
                                    "with --reset); its image ids mean nothing here: delete it")
        with transaction(conn):
            for name, _ in IMAGE_TRIGGERS:
                conn.execute(f"DROP TRIGGER {name}")
            for name, path in zip(names, paths, strict=True):
                t1 = time.monotonic()
                shard = conn.execute(
                    f"SELECT value FROM {name}.meta WHERE key = 'task_shard'").fetchone()
                has_url = any(r[1] == "fetched_url" for r in
                              conn.execute(f"PRAGMA {name}.table_info(images)"))
                *tallies, images = merge_statements(name, has_url)
                for stmt in tallies:
                    conn.execute(stmt)
                n = conn.execute(images).rowcount
                hosts.merge_from(conn, name)
                array_plans.carry(conn, name)  # tasks still queued keep their share
                conn.execute(_RUNS.format(task=name), (shard[0] if shard else None,))
                done.append((path, max(n, 0), time.monotonic() - t1))
            for _, ddl in IMAGE_TRIGGERS:
                conn.execute(ddl)
    finally:
        for name in names[:len(paths)]:
            if any(r[1] == name for r in conn.execute("PRAGMA database_list")):
                conn.execute(f"DETACH DATABASE {name}")
    for path, n, secs in done:
        remove_database(path, lock_file=True)
        st.tasks += 1
        st.images += n
        st.merged.append(path.name)
        say(f"merge: {path.name}: {n:,} image results in {secs:.1f}s", out)
