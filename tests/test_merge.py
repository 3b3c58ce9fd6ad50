"""Merging array tasks fast: a batch of tasks in one transaction, slice by slice of image ids."""

from __future__ import annotations

import io
import random
import shutil
import time
from pathlib import Path

import pytest

from download_db.arrays import merge, plan
from download_db.db import connection
from download_db.report import collect
from download_db.report.check import check
from tests.helpers import generate, q


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    from download_db.cli.main import init_main

    d = tmp_path_factory.mktemp("merge")
    mm = generate(d / "m.txt", 200, seed=11, hosts=8)
    assert init_main(["--db", str(d / "main.db"), "--multimedia", str(mm), "--no-bar"]) == 0
    return d / "main.db"


def _tasks(built: Path, tmp_path: Path, n: int) -> Path:
    """A copy of the main database and n task databases with every kind of result."""
    main = tmp_path / "main.db"
    shutil.copyfile(built, main)
    rnd = random.Random(n)
    for k in range(1, n + 1):
        shard = plan.Shard(k, n)
        path = plan.task_db_path(plan.tasks_dir_for(main), shard)
        plan.create_task_db(main, path, shard, max_parts=2)
        conn = connection.connect(path, wal=False)
        with connection.transaction(conn):
            for (image_id,) in conn.execute("SELECT image_id FROM images").fetchall():
                status, etype, attempts, nxt = rnd.choice([
                    ("success", None, 1, 0.0), ("failed_permanent", "http_404", 1, 0.0),
                    ("failed_transient", "timeout", 2, time.time() + 600),
                    ("failed_transient", "timeout", 4, 9.0e15), ("pending", None, 0, 0.0)])
                conn.execute("UPDATE images SET status = ?, error_type = ?, attempts = ?, "
                              "next_attempt_at = ?, file_size = ?, last_attempt_at = ? "
                              "WHERE image_id = ?",
                              (status, etype, attempts, nxt, 100 if status == "success" else None,
                               None if status == "pending" else time.time() - rnd.randint(0, 90000),
                               image_id))
            conn.execute("UPDATE images SET claimed_by = 'h:1:1' WHERE image_id = "
                         "(SELECT min(image_id) FROM images)")  # in flight: not merged
        conn.close()
    return main


def test_a_batch_of_tasks_is_one_transaction_and_one_pass(built, tmp_path) -> None:
    main = _tasks(built, tmp_path, 3)
    conn = connection.connect(main)
    sql: list[str] = []
    conn.set_trace_callback(sql.append)
    st = merge.merge_tasks(conn, main, out=io.StringIO())
    conn.set_trace_callback(None)
    assert st.tasks == 3
    # one transaction: each page of images is rewritten once, not once per task
    assert sum(s.startswith("BEGIN") for s in sql) == 1
    # per task and slice of ids (one here): one update, which the counters follow
    # through the merge's temp trigger (no second walk over the rows)
    # (the trace repeats a statement for each trigger run it makes: count distinct texts)
    assert len({s for s in sql if ".images AS t" in s}) == 3
    assert not [s for s in sql if "GROUP BY" in s and ".images" in s]  # no sort of rows
    assert conn.execute("PRAGMA cache_size").fetchone()[0] == -65536  # restored
    conn.close()
    ro = collect.open_readonly(main)
    assert check(ro, None, files=False).ok  # the counters agree with the rows
    ro.close()


def test_more_tasks_than_a_batch(built, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(merge, "BATCH", 2)
    main = _tasks(built, tmp_path, 5)
    expected = {}
    for p in plan.task_dbs(plan.tasks_dir_for(main)):
        expected.update({r[0]: r[1:] for r in q(p, "SELECT image_id, status, attempts FROM "
                                                   "images WHERE last_attempt_at IS NOT NULL "
                                                   "AND claimed_by IS NULL")})
    conn = connection.connect(main)
    st = merge.merge_tasks(conn, main, out=io.StringIO())
    conn.close()
    assert st.tasks == 5 and st.images == len(expected)
    assert plan.task_dbs(plan.tasks_dir_for(main)) == []
    got = {r[0]: r[1:] for r in q(main, "SELECT image_id, status, attempts FROM images "
                                        "WHERE last_attempt_at IS NOT NULL")}
    assert got == expected
    ro = collect.open_readonly(main)
    assert check(ro, None, files=False).ok
    ro.close()
