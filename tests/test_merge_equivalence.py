"""The sliced merge leaves the main database exactly as the merge shipped before it did,
and a merge stopped at any statement loses nothing: the next merge completes it."""

from __future__ import annotations

import importlib.util
import io
import random
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from download_db.arrays import merge, merge_counts, plan
from download_db.db import connection
from download_db.db.sqlite import sqlite3
from download_db.report import collect
from download_db.report.check import check
from tests.helpers import generate

BENCH = Path(__file__).resolve().parent.parent / "bench" / "merge.py"


def _bench():
    """bench/merge.py, which keeps the shipped merge as its baseline."""
    if "bench_merge" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_merge", BENCH)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules["bench_merge"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["bench_merge"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    from download_db.cli.main import init_main

    d = tmp_path_factory.mktemp("equiv")
    mm = generate(d / "m.txt", 120, seed=5, hosts=6)
    assert init_main(["--db", str(d / "main.db"), "--multimedia", str(mm), "--no-bar"]) == 0
    return d / "main.db"


OUTCOMES = [  # status, error_type, attempts, next_attempt_at, file_size
    ("success", None, 1, 0.0, 100), ("failed_permanent", "http_404", 1, 0.0, None),
    ("failed_transient", "timeout", 2, 1.8e9, None),
    ("failed_transient", "timeout", 4, 9.0e15, None)]


def _array(built: Path, d: Path, n: int, seed: int) -> Path:
    """A main database some of whose images were tried already, and n task databases
    with every kind of row: done, untouched, in flight, equal to main (merged before)."""
    rnd = random.Random(seed)
    d.mkdir()
    main = d / "main.db"
    shutil.copyfile(built, main)
    conn = connection.connect(main)  # with the triggers: the counters stay exact
    with connection.transaction(conn):
        for (image_id,) in conn.execute("SELECT image_id FROM images").fetchall():
            if rnd.random() < 0.3:
                s, e, a, nxt, size = rnd.choice(OUTCOMES[2:])
                conn.execute("UPDATE images SET status = ?, error_type = ?, attempts = ?, "
                             "next_attempt_at = ?, file_size = ?, last_attempt_at = ? "
                             "WHERE image_id = ?", (s, e, a, nxt, size, 1.7e9 + image_id,
                                                    image_id))
    plan.freeze(conn)
    conn.close()
    for k in range(1, n + 1):
        shard = plan.Shard(k, n)
        path = plan.task_db_path(plan.tasks_dir_for(main), shard)
        plan.create_task_db(main, path, shard, max_parts=2, max_attempts=6)
        tc = connection.connect(path, wal=False)
        with connection.transaction(tc):
            for (image_id,) in tc.execute("SELECT image_id FROM images").fetchall():
                u = rnd.random()
                if u < 0.15:
                    continue  # not reached
                if u < 0.2:  # in flight when the task ended
                    tc.execute("UPDATE images SET claimed_by = 'h:1:1', status = 'success', "
                               "last_attempt_at = 1.8e9 WHERE image_id = ?", (image_id,))
                    continue
                s, e, a, nxt, size = rnd.choice(OUTCOMES)
                when = None if u < 0.25 else 1.79e9 + rnd.randrange(0, 7200)
                tc.execute("UPDATE images SET status = ?, error_type = ?, attempts = ?, "
                           "next_attempt_at = ?, file_size = ?, sha256 = ?, "
                           "last_attempt_at = coalesce(?, last_attempt_at) WHERE image_id = ?",
                           (s, e, a, nxt, size, f"{image_id:064x}", when, image_id))
        tc.close()
    return main


def _dump(db: Path) -> dict[str, list]:
    """Every table's rows (counters included), in a fixed order."""
    conn = connection.open_readonly(db)
    try:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'")]
        return {n: sorted(conn.execute(f"SELECT * FROM {n}").fetchall(), key=repr)
                for n in names}
    finally:
        conn.close()


@settings(max_examples=16, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 4), seed=st.integers(0, 10**6),
       slice_=st.sampled_from([1, 3, 17, 64, 1 << 18]), batch=st.sampled_from([1, 2, 8]),
       snapshot=st.booleans())
def test_sliced_merge_equals_the_shipped_merge(built, tmp_path_factory, n, seed, slice_,
                                               batch, snapshot) -> None:
    """Both ways of counting: from a snapshot on a second thread (tasks of one array)
    and by the temp trigger (any other batch)."""
    d = tmp_path_factory.mktemp("cmp")
    old = _array(built, d / "old", n, seed)
    shutil.copytree(d / "old", d / "new")
    new = d / "new" / old.name
    conn = connection.connect(old)
    _bench().shipped_merge(conn, old, batch=batch)
    conn.close()
    conn = connection.connect(new)
    saved = merge.SLICE, merge.BATCH, merge_counts.disjoint
    merge.SLICE, merge.BATCH = slice_, batch
    if not snapshot:
        merge_counts.disjoint = lambda conn, names: False
    try:
        st_ = merge.merge_tasks(conn, new, out=io.StringIO())
    finally:
        merge.SLICE, merge.BATCH, merge_counts.disjoint = saved
        conn.close()
    assert st_.tasks == n
    a, b = _dump(old), _dump(new)
    a.pop("runs"), b.pop("runs")  # the merge's own run rows differ only in time
    assert a == b
    ro = collect.open_readonly(new)
    assert check(ro, None, files=False).ok
    ro.close()
    shutil.rmtree(d)


def _progress_calls(db: Path) -> int:
    """Merge ``db``'s tasks, counting the progress handler's calls (every 100
    instructions): the scale a stop or a kill "this far into the merge" is put on."""
    calls = 0

    def count() -> bool:
        nonlocal calls
        calls += 1
        return False

    conn = connection.connect(db)
    conn.set_progress_handler(count, 100)
    merge.merge_tasks(conn, db, out=io.StringIO())
    conn.close()
    return calls


class _Stop(Exception):
    pass


@pytest.mark.parametrize("at", [0.0, 0.3, 0.7, 0.99])
def test_a_merge_stopped_anywhere_loses_nothing(built, tmp_path, monkeypatch, at) -> None:
    """A stop (SIGTERM's progress handler, a kill) inside the merge rolls its
    transaction back; the next merge does all of it, to the same database."""
    monkeypatch.setattr(merge, "SLICE", 16)  # many statements to stop between
    main = _array(built, tmp_path / "main", 3, 7)
    shutil.copytree(tmp_path / "main", tmp_path / "want")
    want = tmp_path / "want" / main.name
    after, calls = int(_progress_calls(want) * at), 0  # stop this far into the same merge
    conn = connection.connect(main)

    def stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > after

    conn.set_progress_handler(stop, 100)
    with pytest.raises(sqlite3.OperationalError, match="interrupt"):
        merge.merge_tasks(conn, main, out=io.StringIO())
    conn.set_progress_handler(None, 0)
    assert len(plan.task_dbs(plan.tasks_dir_for(main))) == 3  # nothing deleted
    assert check(collect.open_readonly(main), None, files=False).ok  # counters still exact
    merge.merge_tasks(conn, main, out=io.StringIO())
    conn.close()
    a, b = _dump(want), _dump(main)
    a.pop("runs"), b.pop("runs")
    assert a == b


_KILLER = """
import io, os, signal, sys
from pathlib import Path
from download_db.arrays import merge
from download_db.db import connection
merge.SLICE = 16
db, after = Path(sys.argv[1]), int(sys.argv[2])
conn = connection.connect(db)
calls = 0
def die():
    global calls
    calls += 1
    if calls > after:
        os.kill(os.getpid(), signal.SIGKILL)
    return False
conn.set_progress_handler(die, 100)
merge.merge_tasks(conn, db, out=io.StringIO())
"""


@pytest.mark.parametrize("at", [0.01, 0.1, 0.6, 0.97])
def test_a_merge_killed_mid_transaction_is_completed_by_the_next(built, tmp_path, monkeypatch,
                                                                 at) -> None:
    """SIGKILL inside the merge (hot WAL, task databases still there): the next
    merge recovers the database and leaves what an uninterrupted merge leaves."""
    import subprocess

    monkeypatch.setattr(merge, "SLICE", 16)
    main = _array(built, tmp_path / "main", 3, 11)
    shutil.copytree(tmp_path / "main", tmp_path / "want")
    want = tmp_path / "want" / main.name
    after = int(_progress_calls(want) * at)  # the kill this far into the same merge
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(main), str(after)], cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == -9  # killed inside the merge, not finished
    assert len(plan.task_dbs(plan.tasks_dir_for(main))) == 3
    conn = connection.connect(main)
    merge.merge_tasks(conn, main, out=io.StringIO())
    conn.close()
    a, b = _dump(want), _dump(main)
    a.pop("runs"), b.pop("runs")
    assert a == b
    assert check(collect.open_readonly(main), None, files=False).ok
