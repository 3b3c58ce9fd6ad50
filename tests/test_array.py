"""Job arrays: shard numbering, the host-affine plan, task databases, merge, refusals, report."""

from __future__ import annotations

import io
import random
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from download_db import states
from download_db.arrays import plan
from download_db.arrays.merge import merge_tasks
from download_db.cli.main import init_main
from download_db.db import connection
from download_db.db.gbif_ids import finalize
from download_db.db.sqlite import sqlite3
from download_db.errors import DatabaseError, UsageError
from download_db.progress import RunContext
from download_db.report import collect
from download_db.report.check import check
from tests.helpers import generate

# -- shard numbering ---------------------------------------------------------------

@pytest.mark.parametrize("env,want", [
    ({"SGE_TASK_ID": "3", "SGE_TASK_FIRST": "1", "SGE_TASK_LAST": "4",
      "SGE_TASK_STEPSIZE": "1"}, (3, 4)),
    ({"SGE_TASK_ID": "6", "SGE_TASK_FIRST": "2", "SGE_TASK_LAST": "10",
      "SGE_TASK_STEPSIZE": "2"}, (3, 5)),
    ({"SGE_TASK_ID": "undefined"}, None),
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_MIN": "0",
      "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MAX": "3"}, (1, 4)),
    ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5",
      "SLURM_ARRAY_TASK_COUNT": "3"}, (3, 3)),
    ({}, None),
])
def test_shard_from_scheduler_variables(env, want) -> None:
    got = plan.shard_from_env(env)
    assert (None if got is None else (got.index, got.count)) == want


def test_slurm_array_with_a_step_is_refused() -> None:
    with pytest.raises(UsageError, match="step"):
        plan.shard_from_env({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1",
                              "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MAX": "5"})


@pytest.mark.parametrize("text", ["0/4", "5/4", "a/b", "3", "1/0"])
def test_bad_shard_flag(text) -> None:
    with pytest.raises(UsageError):
        plan.parse_shard(text)


# -- the plan ----------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(1, 500), st.integers(0, 10_000), max_size=60),
       st.integers(1, 12), st.integers(1, 8))
def test_plan_is_a_host_affine_partition(work, n, max_parts) -> None:
    tasks = plan.plan(work, n, max_parts)
    assert len(tasks) == n and plan.plan(work, n, max_parts) == tasks  # deterministic
    pieces = [p for t in tasks for p in t]
    share = max(1, -(-sum(work.values()) // n))
    for host, w in work.items():
        mine = [p for p in pieces if p.host_id == host]
        if w == 0:
            assert not mine
            continue
        k = mine[0].parts
        assert sorted(p.part for p in mine) == list(range(k))  # every part exactly once
        assert sum(p.work for p in mine) == w
        assert k <= max(1, min(max_parts, n))
        assert k == 1 or w > share  # only hosts bigger than a task's share are split
        owners = [i for i, t in enumerate(tasks) for p in t if p.host_id == host]
        assert len(set(owners)) == len(owners)  # parts of a host run in different tasks
    if pieces:
        loads = [sum(p.work for p in t) for t in tasks]
        assert max(loads) <= share + max(p.work for p in pieces)


# -- task databases and merge ------------------------------------------------------

@pytest.fixture
def main_db(build, tmp_path) -> Path:
    code, db = build(generate(tmp_path / "m.txt", 500, seed=9, hosts=7))
    assert code == 0 and plan.is_frozen(db)  # a finished build is ready for an array
    return db


def _task_rows(path: Path) -> set[int]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT image_id FROM images")}
    finally:
        conn.close()


def _make_tasks(main: Path, n: int) -> list[Path]:
    out = []
    for k in range(1, n + 1):
        shard = plan.Shard(k, n)
        path = plan.task_db_path(plan.tasks_dir_for(main), shard)
        plan.create_task_db(main, path, shard, max_parts=4)
        out.append(path)
    return out


def _work(main: Path) -> set[int]:
    conn = sqlite3.connect(main)
    try:
        return {r[0] for r in conn.execute(
            f"SELECT image_id FROM images WHERE {states.EXHAUSTED_WHERE}")}
    finally:
        conn.close()


@pytest.mark.parametrize("n", [1, 3, 4])
def test_tasks_partition_the_work(main_db, n) -> None:
    paths = _make_tasks(main_db, n)
    sets = [_task_rows(p) for p in paths]
    assert set().union(*sets) == _work(main_db)
    assert sum(len(s) for s in sets) == len(_work(main_db))  # pairwise disjoint
    for p in paths:  # rollback journal, readable from other hosts; never WAL
        assert plan.is_frozen(p)


def _simulate_results(path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    conn = connection.connect(path, wal=False)
    with connection.transaction(conn):
        for (image_id,) in conn.execute("SELECT image_id FROM images").fetchall():
            r = rnd.random()
            if r < 0.6:
                conn.execute("UPDATE images SET status = 'success', attempts = 1, "
                             "last_attempt_at = ?, file_size = 10, file_path = 'x.jpg' "
                             "WHERE image_id = ?", (time.time(), image_id))
            elif r < 0.8:
                conn.execute("UPDATE images SET status = 'failed_permanent', attempts = 1, "
                             "error_type = 'http_404', last_attempt_at = ? WHERE image_id = ?",
                             (time.time(), image_id))
            elif r < 0.85:  # in flight when the task died: stays as the main DB has it
                conn.execute("UPDATE images SET status = 'success', attempts = 1, "
                             "last_attempt_at = ?, claimed_by = 'x:1:1' WHERE image_id = ?",
                             (time.time(), image_id))
        conn.execute("INSERT INTO runs(stage, started_at, heartbeat_at, finished_at, hostname, "
                     "pid, outcome) VALUES ('download', 1, 2, 3, 'node7', 1, 'ok')")
    conn.close()


def test_merge_folds_results_and_counters_agree(main_db, tmp_path) -> None:
    paths = _make_tasks(main_db, 3)
    expected, held = {}, 0
    for i, p in enumerate(paths):
        _simulate_results(p, i)
        conn = sqlite3.connect(p)
        expected.update({r[0]: r[1:] for r in conn.execute(
            "SELECT image_id, status, error_type FROM images WHERE claimed_by IS NULL "
            "AND last_attempt_at IS NOT NULL")})
        held += conn.execute("SELECT count(*) FROM images WHERE claimed_by IS NOT NULL"
                             ).fetchone()[0]
        conn.close()
    # While unmerged, the report already counts the tasks' progress.
    ro = collect.open_readonly(main_db)
    before = collect.collect(ro, db=main_db)
    ro.close()
    assert len(before["array"]["tasks"]) == 3

    conn = connection.connect(main_db)
    st = merge_tasks(conn, main_db)
    assert st.tasks == 3 and st.images == len(expected)
    got = {r[0]: r[1:] for r in conn.execute("SELECT image_id, status, error_type FROM images "
                                             "WHERE last_attempt_at IS NOT NULL")}
    assert got == expected
    assert plan.task_dbs(plan.tasks_dir_for(main_db)) == []
    assert conn.execute("SELECT count(*) FROM runs WHERE shard IS NOT NULL").fetchone()[0] == 3
    # gbifIDs are finalize's job: the merge leaves them, finalize rolls them up
    assert conn.execute("SELECT count(*) FROM gbif_ids WHERE status <> 'pending'"
                        ).fetchone()[0] == 0
    finalize(conn, RunContext(out=io.StringIO(), bar=False))
    assert conn.execute("SELECT count(*) FROM gbif_ids WHERE status = 'done'").fetchone()[0]
    conn.close()
    ro = collect.open_readonly(main_db)
    after = collect.collect(ro, db=main_db)
    # a success still held by its claim (file maybe not renamed) is not merged: it stays
    # pending in the main DB, and the next download adopts or refetches its file
    b, a = before["images"]["by_status"], after["images"]["by_status"]
    assert held and a["success"] == b["success"] - held and a["pending"] == b["pending"] + held
    assert a["failed_permanent"] == b["failed_permanent"]
    assert check(ro, None, files=False).ok
    ro.close()


def test_merge_twice_is_idempotent(main_db) -> None:
    (path,) = _make_tasks(main_db, 1)
    _simulate_results(path, 1)
    copy = path.read_bytes()
    conn = connection.connect(main_db)
    merge_tasks(conn, main_db)
    first = conn.execute("SELECT * FROM images ORDER BY image_id").fetchall()
    path.write_bytes(copy)  # a kill between the merge's commit and the delete
    merge_tasks(conn, main_db)
    assert conn.execute("SELECT * FROM images ORDER BY image_id").fetchall() == first
    conn.close()
    assert check(collect.open_readonly(main_db), None, files=False).ok


def test_array_tasks_refuse_a_main_db_in_wal_mode(main_db) -> None:
    conn = connection.connect(main_db)  # any writer switches it to WAL
    conn.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")
    with pytest.raises(DatabaseError, match="--merge-only"):
        plan.open_frozen(main_db)
    conn.close()


def test_changing_n_is_refused_before_a_merge_allowed_after(main_db, capsys) -> None:
    _make_tasks(main_db, 2)
    with pytest.raises(UsageError, match="2-task array"):
        plan.refuse_other_arrays(plan.tasks_dir_for(main_db), plan.Shard(1, 3))
    assert init_main(["--db", str(main_db), "--merge-only", "--no-bar"]) == 0
    plan.refuse_other_arrays(plan.tasks_dir_for(main_db), plan.Shard(1, 3))
    assert plan.is_frozen(main_db)


def test_writing_stages_refuse_while_a_task_runs(main_db, capsys) -> None:
    (path,) = _make_tasks(main_db, 1)
    conn = connection.connect(path, wal=False)
    with connection.transaction(conn):
        conn.execute("INSERT INTO runs(stage, started_at, heartbeat_at, hostname, pid, outcome) "
                     "VALUES ('download', ?, ?, 'othernode', 4242, 'running')",
                     (time.time(), time.time()))
    conn.close()
    for mode in ("--merge-only", "--finalize-only"):
        assert init_main(["--db", str(main_db), mode, "--no-bar"]) == 3
        err = capsys.readouterr().err
        assert "may still be writing" in err and "--force" in err and err.count("\n") == 1
    assert init_main(["--db", str(main_db), "--finalize-only", "--no-bar", "--force"]) == 0
    assert plan.task_dbs(plan.tasks_dir_for(main_db)) == []


def test_task_db_from_another_build_is_refused(main_db, tmp_path, build) -> None:
    (path,) = _make_tasks(main_db, 1)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = 'other' WHERE key = 'build_id'")
    conn.commit()
    conn.close()
    conn = connection.connect(main_db)
    with pytest.raises(DatabaseError, match="another build"):
        merge_tasks(conn, main_db)
    conn.close()


def test_a_larger_max_attempts_brings_parked_retries_into_the_array(main_db) -> None:
    conn = connection.connect(main_db)
    with connection.transaction(conn):
        conn.execute("UPDATE images SET status = 'failed_transient', attempts = 4, "
                     f"next_attempt_at = {states.EXHAUSTED}, error_type = 'timeout', "
                     "last_attempt_at = 1 WHERE image_id % 10 = 0")
    plan.freeze(conn)
    parked = {r[0] for r in conn.execute("SELECT image_id FROM images WHERE image_id % 10 = 0")}
    conn.close()
    for max_attempts, included in ((4, False), (6, True)):
        shard = plan.Shard(1, 1)
        path = plan.task_db_path(plan.tasks_dir_for(main_db), shard)
        path.unlink(missing_ok=True)
        plan.create_task_db(main_db, path, shard, max_parts=4, max_attempts=max_attempts)
        assert (parked <= _task_rows(path)) is included
        assert not (parked & _task_rows(path)) or included
