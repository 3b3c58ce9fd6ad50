#!/usr/bin/env python3
"""Merge benchmark: fold N array tasks' results (10M image results in all) into the main
database, against a baseline measured in the same run.

    python bench/merge.py --results 10000000 --tasks 4 --workdir /var/tmp/mergebench

It builds a main database (bench/bigdb.py's shape, every image pending), freezes it, lets
each of N tasks take its share (plan.create_task_db, the code a task runs), marks every
task image done (success 80%, failed 20%) as a download would, then times
init_download_db.py's merge (merge.merge_tasks: images, gbifID roll-up, hosts, runs).

Baseline: the same UPDATE ... FROM of the image rows alone, without the counters'
triggers and without the gbifID roll-up (research note 6.6 step 4: 225k rows/s), on an
identical copy. Target (issue 5): <= 60 s for 10M task results.
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

from download_db.arrays import plan  # noqa: E402
from download_db.arrays.merge import _IMAGES, merge_tasks  # noqa: E402
from download_db.db import connection  # noqa: E402


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

    base = a.workdir / "baseline"
    base.mkdir()
    shutil.copy(main_db, base / "main.db")
    conn = connection.connect(base / "main.db")
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"
                                ).fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    t = time.monotonic()
    n_base = 0
    for path in plan.task_dbs(plan.tasks_dir_for(main_db)):
        conn.execute("ATTACH DATABASE ? AS task", (str(path),))
        with connection.transaction(conn):
            n_base += conn.execute(_IMAGES).rowcount
        conn.execute("DETACH DATABASE task")
    baseline = time.monotonic() - t
    conn.close()
    shutil.rmtree(base)
    print(f"baseline bare UPDATE ... FROM: {n_base:,} rows in {baseline:.1f}s "
          f"({n_base / baseline:,.0f} rows/s)", flush=True)

    conn = connection.connect(main_db)
    t = time.monotonic()
    st = merge_tasks(conn, main_db, out=sys.stdout)
    ours = time.monotonic() - t
    conn.close()
    print(f"merge: {st.tasks} tasks, {st.images:,} image results in "
          f"{ours:.1f}s ({st.images / ours:,.0f} results/s); merge/baseline = "
          f"{ours / baseline:.2f}", flush=True)
    print(f"TARGET merge of {a.results:,} results <= 60 s: {ours:.0f} s "
          f"{'MET' if ours <= 60 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
