#!/usr/bin/env python3
"""Merge benchmark: fold N array tasks' results (10M image results in all) into the main
database, the merge as shipped before against the merge now, in the same run.

    python bench/merge.py --results 10000000 --tasks 4 --workdir /var/tmp/mergebench

It builds a main database (bench/bigdb.py's shape, every image pending), freezes it, lets
each of N tasks take its share (plan.create_task_db, the code a task runs), marks every
task image done (success 80%, failed 20%) as a download would, copies the lot, then times
on one copy the merge as shipped before (shipped_merge: a batch of tasks per transaction,
each task's counters and update a pass over the whole images table) and on the other
merge.merge_tasks (slice by slice of image ids, the table walked once per batch, an upsert
per task and slice, the counters counted on a second thread), each to its merged and
checkpointed file, and checks that both leave the same counters and results. CPU seconds
of the process (both threads) are printed beside the wall time.
Target (issue 12): <= 60 s for 10M task results.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bigdb  # noqa: E402

from download_db.arrays import merge, plan  # noqa: E402
from download_db.db import array_plans, canvases, connection, hosts, meta, tallies  # noqa: E402
from download_db.db.sqlite import sqlite3  # noqa: E402


def prepare(workdir: Path, results: int, tasks: int) -> Path:
    main = workdir / "main.db"
    t = time.monotonic()
    bigdb.build(main, results)
    conn = connection.connect(main)
    with connection.transaction(conn):  # a fresh download: everything pending, never tried
        conn.execute("UPDATE images SET status = 'pending', attempts = 0, next_attempt_at = 0, "
                     "error_type = NULL, file_size = NULL, file_path = NULL, sha256 = NULL, "
                     "last_attempt_at = NULL, http_status = NULL")
    plan.freeze(conn)
    conn.close()
    print(f"main database: {time.monotonic() - t:.0f}s", flush=True)
    for k in range(1, tasks + 1):
        t = time.monotonic()
        shard = plan.Shard(k, tasks)
        path = plan.task_db_path(plan.tasks_dir_for(main), shard)
        n = plan.create_task_db(main, path, shard, max_parts=4)
        c = connection.connect(path, wal=False)
        with connection.transaction(c):
            c.execute("UPDATE images SET status = CASE WHEN image_id % 5 = 0 "
                      "THEN 'failed_permanent' ELSE 'success' END, attempts = 1, "
                      "last_attempt_at = 1790000000 + image_id % 86400, "
                      "error_type = CASE WHEN image_id % 5 = 0 THEN 'http_404' END, "
                      "file_size = 150000, file_path = 'x/' || image_id || '.jpg', "
                      "sha256 = printf('%064x', image_id), http_status = 200")
        c.close()
        print(f"task {shard}: {n:,} images taken and done in {time.monotonic() - t:.0f}s",
              flush=True)
    return main


# -- the merge as shipped before slicing (daabe6a), the baseline ----------------------

_SHIPPED_DONE = "t.last_attempt_at IS NOT NULL AND t.claimed_by IS NULL"
_SHIPPED_IMAGES = f"""
UPDATE images SET status = t.status, attempts = t.attempts, next_attempt_at = t.next_attempt_at,
       http_status = t.http_status, error_type = t.error_type, file_size = t.file_size,
       width = t.width, height = t.height, last_attempt_at = t.last_attempt_at,
       file_path = t.file_path, sha256 = t.sha256, error_detail = t.error_detail,
       phash = t.phash, dhash = t.dhash, fetched_url = t.fetched_url, claimed_by = NULL,
       from_gbif_cache = NULL
  FROM {{task}}.images AS t
 WHERE t.image_id = images.image_id AND {_SHIPPED_DONE}
   AND t.last_attempt_at IS NOT images.last_attempt_at
"""
_SHIPPED_CHANGED = ("FROM {task}.images AS t JOIN images AS i ON i.image_id = t.image_id "
                    f"WHERE {_SHIPPED_DONE} AND t.last_attempt_at IS NOT i.last_attempt_at")


def _shipped_both_sides(t: tallies.Tally, from_where: str) -> list[str]:
    """A signed counter's change as shipped: one GROUP BY pass of old and new key
    together into a temp table, each side added from it."""
    def agg(e: str) -> str:
        return "count(*)" if e == "1" else f"sum({e})"
    k, m = len(t.key), len(t.sums)
    keys = [f"{e.format(r=r).replace('t.host_id', 'i.host_id')} AS {side}k{i}"
            for side, r in (("o", "i"), ("n", "t")) for i, (_, e) in enumerate(t.key)]
    sums = [f"{agg(e.format(r=r))} AS {side}s{i}"
            for side, r in (("o", "i"), ("n", "t")) for i, (_, e) in enumerate(t.sums)]
    temp = f"temp.merge_{t.table}"

    def side(s: str, sign: str) -> str:
        ks = ", ".join(f"{s}k{i}" for i in range(k))
        vs = ", ".join(f"{sign}sum({s}s{i})" for i in range(m))
        return (f"INSERT INTO {t.table}({', '.join(t.columns())}) SELECT {ks}, {vs} "
                f"FROM {temp} WHERE 1 GROUP BY {', '.join(str(i + 1) for i in range(k))}"
                f"{t.upsert()}")
    return [f"DROP TABLE IF EXISTS {temp}",
            f"CREATE TEMP TABLE merge_{t.table} AS SELECT {', '.join(keys + sums)} "
            f"{from_where} GROUP BY {', '.join(str(i + 1) for i in range(2 * k))}",
            side("o", "-"), side("n", ""), f"DROP TABLE {temp}"]


def shipped_statements(task: str) -> list[str]:
    changed = _SHIPPED_CHANGED.format(task=task)
    out = []
    for t in tallies.TALLIES:
        if t.source != "images":
            continue
        out += (_shipped_both_sides(t, changed) if t.signed else
                [tallies.bulk_sql(t, "t", changed, columns_from={"host_id": "i"})])
    return [*out, _SHIPPED_IMAGES.format(task=task)]


def shipped_merge(conn: sqlite3.Connection, db: Path, batch: int = 8) -> int:
    """merge.merge_tasks as shipped: a batch of tasks per transaction, each task's
    counters and update a pass over the whole images table. Returns image results."""
    paths = plan.task_dbs(plan.tasks_dir_for(db))
    build = meta.get_meta(conn, "build_id")
    conn.execute("PRAGMA cache_size = -1048576")
    total = 0
    for i in range(0, len(paths), batch):
        names = [f"task{k}" for k in range(len(paths[i:i + batch]))]
        for name, path in zip(names, paths[i:i + batch], strict=True):
            conn.execute(f"ATTACH DATABASE ? AS {name}", (connection.readonly_uri(path),))
            task_build = conn.execute(
                f"SELECT value FROM {name}.meta WHERE key = 'build_id'").fetchone()
            assert (task_build[0] if task_build else None) == build
        with connection.transaction(conn):
            for name, _ in tallies.IMAGE_TRIGGERS:
                conn.execute(f"DROP TRIGGER {name}")
            for name in names:
                shard = conn.execute(
                    f"SELECT value FROM {name}.meta WHERE key = 'task_shard'").fetchone()
                *counters, images = shipped_statements(name)
                for stmt in counters:
                    conn.execute(stmt)
                total += max(conn.execute(images).rowcount, 0)
                hosts.merge_from(conn, name)
                array_plans.carry(conn, name)
                conn.execute(merge._RUNS.format(task=name, depends_on="depends_on"),
                             (shard[0] if shard else None,))
            for _, ddl in tallies.IMAGE_TRIGGERS:
                conn.execute(ddl)
            for name in names:  # other IIIF canvases the tasks queued, as the merge adds them
                canvases.merge_from(conn, name)
        for name in names:
            conn.execute(f"DETACH DATABASE {name}")
        for path in paths[i:i + batch]:
            connection.remove_database(path, lock_file=True)
    conn.execute("PRAGMA cache_size = -65536")
    return total


def timed(db: Path, fn: Callable[[sqlite3.Connection], int]) -> tuple[int, float, float]:
    """(image results, seconds to merge, seconds to the checkpointed file a freeze
    leaves) of ``fn`` on its own connection."""
    conn = connection.connect(db)
    t, cpu = time.monotonic(), time.process_time()
    n = fn(conn)
    merged = time.monotonic() - t
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    print(f"  ({time.process_time() - cpu:.1f} CPU seconds, load {os.getloadavg()[0]:.1f})",
          flush=True)
    return n, merged, time.monotonic() - t


def counters(db: Path) -> list:
    conn = connection.open_readonly(db)
    try:
        return [conn.execute(f"SELECT * FROM {t.table} ORDER BY 1, 2, 3, 4, 5").fetchall()
                if t.table == "image_tally" else
                conn.execute(f"SELECT * FROM {t.table} ORDER BY 1").fetchall()
                for t in tallies.TALLIES]
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=int, default=10_000_000)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--workdir", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.workdir.exists():
        shutil.rmtree(a.workdir)
    a.workdir.mkdir(parents=True)
    main_db = prepare(a.workdir, a.results, a.tasks)
    before = a.workdir / "before"
    before.mkdir()
    shutil.copy(main_db, before / "main.db")
    shutil.copytree(plan.tasks_dir_for(main_db), plan.tasks_dir_for(before / "main.db"))

    n_old, old, old_ck = timed(before / "main.db", lambda c: shipped_merge(c, before / "main.db"))
    print(f"merge before: {n_old:,} image results in {old:.1f}s ({n_old / old:,.0f} results/s), "
          f"{old_ck:.1f}s with the checkpoint", flush=True)
    n_new, ours, ours_ck = timed(
        main_db, lambda c: merge.merge_tasks(c, main_db, out=sys.stdout).images)
    print(f"merge now: {n_new:,} image results in {ours:.1f}s ({n_new / ours:,.0f} results/s), "
          f"{ours_ck:.1f}s with the checkpoint; before/now = {old / ours:.2f}x "
          f"({old_ck / ours_ck:.2f}x with the checkpoints)", flush=True)
    same = n_old == n_new and counters(before / "main.db") == counters(main_db)
    print(f"counters and results identical: {same}")
    shutil.rmtree(a.workdir)
    print(f"TARGET merge of {a.results:,} results <= 60 s: {ours_ck:.0f} s "
          f"{'MET' if ours_ck <= 60 and same else 'MISSED'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
