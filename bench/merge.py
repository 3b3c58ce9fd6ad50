#!/usr/bin/env python3
"""Merge benchmark: fold N array tasks' results (10M image results in all) into the main
database, the merge as shipped before against the merge now, in the same run.

    python bench/merge.py --results 10000000 --tasks 4 --workdir /var/tmp/mergebench

It builds a main database (bench/bigdb.py's shape, every image pending), freezes it, lets
each of N tasks take its share (plan.create_task_db, the code a task runs), marks every
task image done (success 80%, failed 20%) as a download would, copies the lot, then times
on one copy the merge as it was (a transaction per task, each side of each counter a pass
of its own over the task's rows, the connection's 64 MB cache) and on the other
merge.merge_tasks (a batch of tasks per transaction, one pass per counter, a 1 GiB
cache). Target (issue 12): <= 60 s for 10M task results.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bigdb  # noqa: E402

from download_db.arrays import merge, plan  # noqa: E402
from download_db.db import connection, hosts, tallies  # noqa: E402


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


def old_merge(main: Path) -> int:
    """The merge as shipped before this change (0935c58), for the baseline."""
    conn = connection.connect(main)
    n = 0
    for path in plan.task_dbs(plan.tasks_dir_for(main)):
        conn.execute("ATTACH DATABASE ? AS task", (connection.readonly_uri(path),))
        changed = merge._CHANGED.format(task="task", done=merge._DONE)
        stmts = []
        for t in tallies.TALLIES:
            if t.source != "images":
                continue
            if t.signed:
                stmts.append(tallies.bulk_sql(t, "i", changed, "-"))
            stmts.append(tallies.bulk_sql(t, "t", changed, columns_from={"host_id": "i"}))
        with connection.transaction(conn):
            for stmt in stmts:
                conn.execute(stmt)
            for name, _ in tallies.IMAGE_TRIGGERS:
                conn.execute(f"DROP TRIGGER {name}")
            n += conn.execute(merge.merge_statements("task")[-1]).rowcount
            for _, ddl in tallies.IMAGE_TRIGGERS:
                conn.execute(ddl)
            hosts.merge_from(conn, "task")
        conn.execute("DETACH DATABASE task")
        connection.remove_database(path, lock_file=True)
    conn.close()
    return n


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

    t = time.monotonic()
    n_old = old_merge(before / "main.db")
    old = time.monotonic() - t
    shutil.rmtree(before)
    print(f"merge before: {n_old:,} image results in {old:.1f}s "
          f"({n_old / old:,.0f} results/s)", flush=True)

    conn = connection.connect(main_db)
    t = time.monotonic()
    st = merge.merge_tasks(conn, main_db, out=sys.stdout)
    ours = time.monotonic() - t
    conn.close()
    print(f"merge now: {st.tasks} tasks, {st.images:,} image results in "
          f"{ours:.1f}s ({st.images / ours:,.0f} results/s); before/now = "
          f"{old / ours:.2f}x", flush=True)
    print(f"TARGET merge of {a.results:,} results <= 60 s: {ours:.0f} s "
          f"{'MET' if ours <= 60 else 'MISSED'}")
    shutil.rmtree(a.workdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
