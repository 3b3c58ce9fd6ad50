"""Merging array tasks fast: a batch of tasks in one transaction, slice by slice of image ids."""

from __future__ import annotations

import io
import random
import shutil
import time
from pathlib import Path

import pytest

from download_db.arrays import merge, merge_counts, plan
from download_db.db import connection
from download_db.db.sqlite import sqlite3
from download_db.errors import DatabaseError
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
    # per task and slice of ids (one here): one upsert; the counters' change is
    # counted beside it by a second thread (no temp trigger on every row)
    assert len({s for s in sql if ".images AS t" in s}) == 3
    assert not [s for s in sql if "GROUP BY" in s and ".images" in s]  # no sort of rows
    assert not [s for s in sql if "TEMP TRIGGER" in s]
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


def _merge_traced(main: Path, **kw) -> list[str]:
    conn = connection.connect(main)
    sql: list[str] = []
    conn.set_trace_callback(sql.append)
    try:
        merge.merge_tasks(conn, main, out=io.StringIO(), **kw)
    finally:
        conn.close()
    return sql


def _counters_exact(main: Path) -> bool:
    ro = collect.open_readonly(main)
    try:
        return check(ro, None, files=False).ok
    finally:
        ro.close()


def test_tasks_of_two_arrays_are_counted_by_the_temp_trigger(built, tmp_path) -> None:
    """A snapshot count is exact only for disjoint tasks: a batch mixing arrays
    (two tasks may hold one row) falls back to the trigger, which sees each change."""
    main = _tasks(built, tmp_path, 2)
    other = plan.task_dbs(plan.tasks_dir_for(main))[1]
    c = connection.connect(other, wal=False)
    with connection.transaction(c):
        c.execute("UPDATE meta SET value = 'another-array' WHERE key = 'array_id'")
    c.close()
    sql = _merge_traced(main)
    assert [s for s in sql if "CREATE TEMP TRIGGER" in s]
    assert plan.task_dbs(plan.tasks_dir_for(main)) == []
    assert _counters_exact(main)


def test_a_stop_seen_by_the_counting_thread_rolls_the_batch_back(built, tmp_path,
                                                                 monkeypatch) -> None:
    monkeypatch.setattr(merge_counts, "PROGRESS_STEPS", 10)  # look often on a tiny database
    main = _tasks(built, tmp_path, 3)
    before = q(main, "SELECT * FROM images ORDER BY image_id")
    with pytest.raises(sqlite3.OperationalError, match="interrupt"):
        _merge_traced(main, stop=lambda: True)
    assert len(plan.task_dbs(plan.tasks_dir_for(main))) == 3  # nothing deleted
    assert q(main, "SELECT * FROM images ORDER BY image_id") == before
    assert _counters_exact(main)
    _merge_traced(main)  # the next merge does it all
    assert plan.task_dbs(plan.tasks_dir_for(main)) == [] and _counters_exact(main)


def test_a_task_row_the_main_database_lacks_is_refused(built, tmp_path) -> None:
    """The upsert must only ever update: a task image without its main row means the
    task was not cut from this database, and nothing of the batch is merged."""
    main = _tasks(built, tmp_path, 2)
    task = plan.task_dbs(plan.tasks_dir_for(main))[0]
    (gone,) = q(task, "SELECT max(image_id) FROM images")[0]
    c = connection.connect(main)
    with connection.transaction(c):
        c.execute("DELETE FROM images WHERE image_id = ?", (gone,))
    c.close()
    tables = ("images", "image_tally", "activity")
    before = [q(main, f"SELECT * FROM {t} ORDER BY 1, 2, 3") for t in tables]
    with pytest.raises(DatabaseError, match="main database lacks"):
        _merge_traced(main)
    assert [q(main, f"SELECT * FROM {t} ORDER BY 1, 2, 3") for t in tables] == before
    assert len(plan.task_dbs(plan.tasks_dir_for(main))) == 2
