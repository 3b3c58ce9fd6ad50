"""Merge: fold finished array tasks' result databases into the main database, then remove them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ..db import array_plans, canvases, hosts, runs
from ..db.connection import open_readonly, readonly_uri, remove_database, transaction
from ..db.meta import get_meta
from ..db.sqlite import sqlite3
from ..db.tallies import IMAGE_TRIGGERS, merge_counters
from ..errors import DatabaseError
from ..progress import say
from . import merge_counts
from .plan import task_dbs, tasks_dir_for
from .verdicts import VerdictStats, liveness, merge_verdicts, verdict_dbs

# Only rows the task finished: attempted, and not held by a claim (a dead task's
# in-flight image, or a success whose file may not have reached its name: those
# stay as the main DB has them and the next run adopts or refetches the file),
# within one slice of image ids.
_DONE = ("{t}.last_attempt_at IS NOT NULL AND {t}.claimed_by IS NULL "
         "AND {t}.image_id BETWEEN :lo AND :hi")
# The columns a task's result sets; a task's outcome is its publisher's (the rescue
# from GBIF's image cache does not run in array tasks), so a mark from the cache on
# the main row no longer holds.
_RESULT = ("status", "attempts", "next_attempt_at", "http_status", "error_type", "file_size",
           "width", "height", "last_attempt_at", "file_path", "sha256", "error_detail",
           "phash", "dhash", "edge_hashes", "fetched_url")
_IDENTITY = ("image_id", "gbif_id", "image_no", "host_id", "image_key", "urls")
# An upsert on the rowid, not UPDATE ... FROM: SQLite materialises an UPDATE's join
# into a temp table and seeks every row twice; the upsert walks the task's rows and
# updates each main row in place as it goes (a fifth less CPU at 10M rows). Every
# task row has its main row (the task was cut from it, and the build id matches):
# merge_slice() refuses an insert.
_IMAGES = """
INSERT INTO images({columns})
SELECT {values} FROM {task}.images AS t WHERE {done}
    ON CONFLICT(image_id) DO UPDATE SET {sets}, claimed_by = NULL, from_gbif_cache = NULL
 WHERE excluded.last_attempt_at IS NOT images.last_attempt_at
"""
_RUNS = """
INSERT INTO runs(stage, started_at, finished_at, heartbeat_at, hostname, pid, argv, outcome,
                 counts, message, shard, depends_on)
SELECT stage, started_at, finished_at, heartbeat_at, hostname, pid, argv,
       CASE outcome WHEN 'running' THEN 'crashed' ELSE outcome END, counts, message, ?,
       {depends_on}
  FROM {task}.runs ORDER BY run_id
"""
# The counters follow the update through a temp trigger (tallies.merge_counters):
# the per-row triggers, which upsert the counter table itself three times a row,
# cost 40% of a 10M-row merge; they are dropped and re-created inside the same
# transaction, so no one sees a gap, and a kill rolls the lot back.
COUNTERS = merge_counters(unchanged=("host_id",))  # the update keeps it
# Task databases folded in per transaction (SQLite attaches at most 10).
BATCH = 8
# Image ids per slice. The tasks' rows interleave over the whole images table (hosts
# go to different tasks), so a pass per task walked every page of it once per task
# and per statement: at 10M rows (3.5 GB, over the cache) each walk read the table
# again and spilled it to the WAL again. A slice's pages (~100 MB of images) stay in
# the cache while every task's update (and the counters' trigger) goes over it, so
# the table is walked once per batch, in image_id order.
SLICE = 1 << 18
# Pages the merge may cache (KiB, negative = size): a slice of images, the
# work-list index's pages the batch touches. Restored after the merge.
MERGE_CACHE_KIB = 1 << 20


def slice_statement(task: str, fetched_url: bool = True) -> str:
    """The update of a slice of image ids (parameters :lo, :hi) from the task
    attached as ``task``. ``fetched_url``: the task's images have that column (a task
    database made before it existed and not resumed since has not; its rows merge
    with NULL)."""
    values = [f"t.{c}" for c in _IDENTITY + _RESULT]
    if not fetched_url:
        values[-1] = "NULL"
    return _IMAGES.format(columns=", ".join(_IDENTITY + _RESULT), values=", ".join(values),
                          task=task, done=_DONE.format(t="t"),
                          sets=", ".join(f"{c} = excluded.{c}" for c in _RESULT))


@dataclass
class MergeStats:
    tasks: int = 0
    images: int = 0
    canvases: int = 0  # images rows added for other IIIF canvases the tasks found
    seconds: float = 0.0
    merged: list[str] = field(default_factory=list)
    verify: VerdictStats = field(default_factory=VerdictStats)  # verify tasks' verdicts


def task_liveness(path: Path, now: float | None = None) -> str | None:
    """Why the download task may still be writing, or None."""
    return liveness(path, now, stage="download")


def task_running(db: Path) -> str | None:
    """'task-0001-of-0004.db (run on node7 pid 12, ...)' for an array task (download or
    verify) that may still be running beside ``db``, or None."""
    tasks_dir = tasks_dir_for(db)
    for path in [*task_dbs(tasks_dir), *verdict_dbs(tasks_dir)]:
        alive = (liveness if path.name.startswith("verify-") else task_liveness)(path)
        if alive:
            return f"{path.name} ({alive})"
    return None


def refuse_if_tasks_running(db: Path, what: str) -> None:
    running = task_running(db)
    if running:
        name, alive = running.split(" ", 1)
        raise DatabaseError(
            f"array task {name} may still be writing {alive}; {what} would race "
            "with it. Wait for the array to finish (or qdel/scancel it), or pass --force")


def failed_tasks(db: Path) -> list[str]:
    """The array tasks waiting to be merged whose last run failed (a merge's prerequisite):
    'task-0002-of-0004.db: download 2/4 run 3 on node7 failed: StorageError: ...'."""
    out = []
    for path in task_dbs(tasks_dir_for(db)):
        try:
            conn = open_readonly(path)
            try:
                last = runs.last_run(conn, "download")
            finally:
                conn.close()
        except sqlite3.Error:
            continue  # being merged and deleted right now, or unreadable: the merge says
        if last is not None and last[1] in runs.BLOCKING:
            out.append(f"{path.name}: {runs.describe('download', last)}")
    return out


def merge_tasks(conn: sqlite3.Connection, db: Path, *, force: bool = False,
                out: TextIO | None = None,
                stop: Callable[[], bool] = lambda: False) -> MergeStats:
    """Fold every task database beside ``db`` into it, a batch of tasks per
    transaction; each merged task database is deleted. Idempotent: a kill between the commit
    and the delete merges the same rows again to the same values. gbifID
    statuses are finalize's job (it merges first, then rolls everything up).
    Then the verify tasks' verdicts (arrays/verdicts.py), after the downloads'
    results: a verdict on a file that a download result replaced is moot.
    ``stop``: the stop flag the connection's progress handler checks
    (connection.interruptible), for the counting thread's own connection."""
    t0 = time.monotonic()
    st = MergeStats()
    paths = task_dbs(tasks_dir_for(db))
    if not paths and not verdict_dbs(tasks_dir_for(db)):
        return st
    if not force:
        refuse_if_tasks_running(db, "merging")
    build = get_meta(conn, "build_id")
    cache = conn.execute("PRAGMA cache_size").fetchone()[0]
    conn.execute(f"PRAGMA cache_size = {-MERGE_CACHE_KIB}")
    try:
        for i in range(0, len(paths), BATCH):
            _merge_batch(conn, db, paths[i:i + BATCH], build, st, out, stop)
    finally:
        conn.execute(f"PRAGMA cache_size = {cache}")
    st.verify = merge_verdicts(conn, db, force=force, out=out)
    st.seconds = time.monotonic() - t0
    return st


def _merge_batch(conn: sqlite3.Connection, db: Path, paths: list[Path], build: str | None,
                 st: MergeStats, out: TextIO | None, stop: Callable[[], bool]) -> None:
    """Fold up to BATCH task databases in, in one transaction, then delete them.
    Slice by slice of image ids, each task in turn: a row that two tasks hold (none
    should) ends as the later task has it, as one task after the other would."""
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
        lo, hi = _id_range(conn, names)
        stmts = {name: slice_statement(name, any(
            r[1] == "fetched_url" for r in conn.execute(f"PRAGMA {name}.table_info(images)")))
            for name in names}
        n = dict.fromkeys(names, 0)
        secs = dict.fromkeys(names, 0.0)
        counter = None
        if merge_counts.wal_mode(conn) and merge_counts.disjoint(conn, names):
            counter = merge_counts.ChangeCounter(db, list(zip(names, paths, strict=True)), lo,
                                                 hi, _DONE.format(t="new"), stop)
        with transaction(conn):
            try:
                for name, _ in IMAGE_TRIGGERS:
                    conn.execute(f"DROP TRIGGER {name}")
                if counter is not None:
                    counter.start()  # after BEGIN IMMEDIATE: it sees what the batch finds
                else:
                    for stmt in COUNTERS.begin:
                        conn.execute(stmt)
                for start in range(lo, hi + 1, SLICE):
                    ids = {"lo": start, "hi": min(start + SLICE - 1, hi)}
                    for name, path in zip(names, paths, strict=True):
                        t1 = time.monotonic()
                        n[name] += _merge_slice(conn, stmts[name], ids, path)
                        secs[name] += time.monotonic() - t1
                if counter is not None:
                    for stmt, rows in counter.changes():
                        conn.executemany(stmt, rows)
                else:
                    for stmt in COUNTERS.finish:
                        conn.execute(stmt)
            finally:
                if counter is not None and counter.is_alive():
                    counter.abort()
            for name, path in zip(names, paths, strict=True):
                shard = conn.execute(
                    f"SELECT value FROM {name}.meta WHERE key = 'task_shard'").fetchone()
                hosts.merge_from(conn, name)
                array_plans.carry(conn, name)  # tasks still queued keep their share
                # a task database made before schema v12 has no depends_on column
                cols = {r[1] for r in conn.execute(f"PRAGMA {name}.table_info(runs)")}
                conn.execute(_RUNS.format(task=name, depends_on="depends_on" if "depends_on"
                                          in cols else "NULL"), (shard[0] if shard else None,))
                done.append((path, n[name], secs[name]))
            for _, ddl in IMAGE_TRIGGERS:
                conn.execute(ddl)
            # new rows (fresh ids and numbers) after the triggers are back: they count
            added = [canvases.merge_from(conn, name) for name in names]
    finally:
        for name in names[:len(paths)]:
            if any(r[1] == name for r in conn.execute("PRAGMA database_list")):
                conn.execute(f"DETACH DATABASE {name}")
    for (path, n_images, seconds), new in zip(done, added, strict=True):
        remove_database(path, lock_file=True)
        st.tasks += 1
        st.images += n_images
        st.canvases += new
        st.merged.append(path.name)
        say(f"merge: {path.name}: {n_images:,} image results"
            + (f", {new:,} images of other IIIF canvases added" if new else "")
            + f" in {seconds:.1f}s", out)


def _merge_slice(conn: sqlite3.Connection, stmt: str, ids: dict, path: Path) -> int:
    """Run one slice's upsert; the image results it merged."""
    before = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
    n = max(conn.execute(stmt, ids).rowcount, 0)
    if conn.execute("SELECT last_insert_rowid()").fetchone()[0] != before:
        raise DatabaseError(f"{path} holds images that {path.name}'s main database lacks; "
                            "it was not cut from this database: delete it")
    return n


def _id_range(conn: sqlite3.Connection, names: list[str]) -> tuple[int, int]:
    """The smallest and largest image id in the attached tasks (rowid ends: instant)."""
    ends = [conn.execute(f"SELECT (SELECT min(image_id) FROM {name}.images), "
                         f"(SELECT max(image_id) FROM {name}.images)").fetchone()
            for name in names]
    have = [e for e in ends if e[0] is not None]
    if not have:
        return 0, -1
    return min(e[0] for e in have), max(e[1] for e in have)
