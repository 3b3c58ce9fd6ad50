"""An array's host -> task plan: fixed when made, kept through merges, no image left to nobody."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from download_db import states
from download_db.arrays import plan
from download_db.arrays.merge import merge_tasks
from download_db.db import connection
from tests.helpers import generate, q


def _task_db(main: Path, k: int, n: int) -> Path:
    """Task k of n starts: its database is made (first start) from the main DB as it is now."""
    shard = plan.Shard(k, n)
    path = plan.task_db_path(plan.tasks_dir_for(main), shard)
    if not path.exists():
        plan.create_task_db(main, path, shard, max_parts=2)
    return path


def _run_task(main: Path, k: int, n: int) -> None:
    """Task k of n runs to its end: every image it holds gets an outcome."""
    path = _task_db(main, k, n)
    conn = connection.connect(path, wal=False)
    with connection.transaction(conn):
        conn.execute("UPDATE images SET status = CASE WHEN image_id % 3 = 0 THEN "
                     "'failed_permanent' ELSE 'success' END, attempts = attempts + 1, "
                     "error_type = CASE WHEN image_id % 3 = 0 THEN 'http_404' END, "
                     "last_attempt_at = ?, file_path = 'x.jpg' "
                     f"WHERE {states.EXHAUSTED_WHERE}", (time.time(),))
    conn.close()


def _merge(main: Path) -> None:
    """What `gbif-download-db merge --force` does: fold finished tasks in, freeze again."""
    conn = connection.connect(main)
    merge_tasks(conn, main, force=True)
    assert plan.freeze(conn)
    conn.close()


def _work(main: Path) -> set[int]:
    return {r[0] for r in q(main, f"SELECT image_id FROM images WHERE {states.EXHAUSTED_WHERE}")}


def _never_tried(main: Path, ids: set[int]) -> set[int]:
    return {r[0] for r in q(main, "SELECT image_id FROM images WHERE last_attempt_at IS NULL")
            } & ids


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    from download_db.cli.main import init_main

    d = tmp_path_factory.mktemp("plan")
    db = d / "main.db"
    mm = generate(d / "m.txt", 150, seed=3, hosts=9)
    assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    return db


def _copy(built: Path, to: Path) -> Path:
    to.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(built, to / "main.db")
    return to / "main.db"


def test_merge_between_tasks_strands_no_work(built, tmp_path) -> None:
    """The trial run: task 1 finishes, a merge, then tasks 2 and 3 start from the changed
    main database. Every image that had work must have been tried by some task."""
    main = _copy(built, tmp_path)
    work = _work(main)
    _run_task(main, 1, 3)
    _merge(main)
    _run_task(main, 2, 3)
    _run_task(main, 3, 3)
    _merge(main)
    assert _never_tried(main, work) == set()


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 5), data=st.data())
def test_any_interleaving_of_task_runs_and_merges(built, n, data) -> None:
    """Tasks run in any order, some twice (resubmitted), with merges anywhere between:
    after every task has run and a final merge, no image with work was left untried."""
    order = data.draw(st.permutations(range(1, n + 1)))
    extra = data.draw(st.lists(st.integers(1, n), max_size=3))
    events: list[int | None] = list(order)
    for k in extra:
        events.insert(data.draw(st.integers(0, len(events))), k)
    for _ in range(data.draw(st.integers(0, 4))):
        events.insert(data.draw(st.integers(0, len(events))), None)  # a merge
    with tempfile.TemporaryDirectory(dir=built.parent) as d:
        main = _copy(built, Path(d))
        work = _work(main)
        for ev in events:
            if ev is None:
                _merge(main)
            else:
                _run_task(main, ev, n)
        _merge(main)
        assert _never_tried(main, work) == set()
        assert _work(main) == set()


def _rows_of(path: Path) -> set[int]:
    return {r[0] for r in q(path, "SELECT image_id FROM images")}


def test_the_plan_is_stored_once_and_carried_by_a_merge(built, tmp_path) -> None:
    main = _copy(built, tmp_path)
    paths = [_task_db(main, k, 3) for k in (1, 2, 3)]
    ids = {q(p, "SELECT value FROM meta WHERE key = 'array_id'")[0][0] for p in paths}
    plans = {tuple(q(p, "SELECT host_id, part, parts, task FROM array_plan ORDER BY 1, 2"))
             for p in paths}
    assert len(ids) == 1 and len(plans) == 1  # every task holds the same, whole plan
    assert q(main, "SELECT count(*) FROM array_plan")[0][0] == 0  # tasks never write main
    _run_task(main, 1, 3)
    _merge(main)
    assert tuple(q(main, "SELECT host_id, part, parts, task FROM array_plan ORDER BY 1, 2")
                 ) == plans.pop()
    assert q(main, "SELECT DISTINCT array_id FROM array_plan") == [(ids.pop(),)]


def test_hosts_the_plan_does_not_know_go_to_exactly_one_task(built, tmp_path) -> None:
    """A host whose retries were parked when the plan was made, re-opened later by a
    larger --max-attempts: one task takes it, whichever tasks already ran."""
    main = _copy(built, tmp_path)
    conn = connection.connect(main)
    host = q(main, "SELECT host_id FROM hosts ORDER BY host_id LIMIT 1")[0][0]
    with connection.transaction(conn):
        conn.execute("UPDATE images SET status = 'failed_transient', attempts = 4, "
                     f"next_attempt_at = {states.EXHAUSTED}, error_type = 'timeout', "
                     "last_attempt_at = 1 WHERE host_id = ?", (host,))
    assert plan.freeze(conn)
    conn.close()
    parked = {r[0] for r in q(main, "SELECT image_id FROM images WHERE host_id = ?", (host,))}
    _task_db(main, 1, 3)
    _merge(main)  # the plan, made without that host, is now in the main DB
    assert host not in {r[0] for r in q(main, "SELECT host_id FROM array_plan")}
    owners = []
    for k in (1, 2, 3):
        shard = plan.Shard(k, 3)
        path = plan.task_db_path(plan.tasks_dir_for(main), shard)
        plan.create_task_db(main, path, shard, max_parts=2, max_attempts=6)
        owners += [k] * bool(parked & _rows_of(path))
        assert not parked & _rows_of(path) or parked <= _rows_of(path)
    assert len(owners) == 1


def test_migration_3_adds_the_plan_table_to_an_old_database(built, tmp_path) -> None:
    from download_db.db.schema import apply_migration

    main = _copy(built, tmp_path)
    conn = connection.connect(main)
    conn.execute("DROP TABLE array_plan")  # as a database made before plans were stored
    with connection.transaction(conn):
        apply_migration(conn, 3)
    assert conn.execute("SELECT count(*) FROM array_plan").fetchone()[0] == 0
    conn.close()
