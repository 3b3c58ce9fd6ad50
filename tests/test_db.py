"""db/: deleting a database, the read-only open, retries, and counters that equal a recount."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from download_db.arrays.merge import merge_tasks
from download_db.arrays.plan import Shard, task_db_path, tasks_dir_for
from download_db.db import connection, tallies
from download_db.db.connection import (
    connect,
    open_readonly,
    remove_database,
    retry_locked,
    transaction,
)
from download_db.db.schema import create_schema
from download_db.db.sqlite import sqlite3
from download_db.states import EXHAUSTED, FLAG_LEGACY, FLAG_RAW, IMAGE_STATUSES
from tests.helpers import make_db, q

# --- files ------------------------------------------------------------------------------


def test_remove_database_removes_side_files(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    files = [db, *(Path(f"{db}{s}") for s in ("-wal", "-shm", "-journal"))]
    for f in files + [Path(f"{db}.lock"), tmp_path / "x.db.tasks"]:
        f.write_text("x")
    remove_database(db)
    assert not any(f.exists() for f in files)
    assert Path(f"{db}.lock").exists() and (tmp_path / "x.db.tasks").exists()
    remove_database(db, lock_file=True)
    assert not Path(f"{db}.lock").exists()
    remove_database(db)  # nothing left: no error


def test_remove_database_of_a_live_wal_database(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    conn = connect(db)
    create_schema(conn)
    assert Path(f"{db}-wal").exists()
    conn.close()
    remove_database(db)
    assert list(tmp_path.iterdir()) == []


def _small_db(tmp_path: Path) -> Path:
    db = tmp_path / "x.db"
    conn = connect(db)
    create_schema(conn)
    conn.close()
    return db


def test_open_readonly_cannot_write(tmp_path: Path) -> None:
    db = _small_db(tmp_path)
    conn = open_readonly(db)
    assert conn.execute("SELECT count(*) FROM images").fetchone()[0] == 0
    for sql in ("INSERT INTO meta VALUES ('a', 'b')", "CREATE TABLE t(x)",
                "PRAGMA user_version = 7"):
        with pytest.raises(sqlite3.OperationalError):
            conn.execute(sql)
    conn.close()
    assert connect(db).execute("SELECT count(*) FROM meta WHERE key = 'a'").fetchone()[0] == 0


def test_open_readonly_never_creates_a_database(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.OperationalError):
        open_readonly(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


def test_immutable_open_reads_a_database_in_rollback_mode(tmp_path: Path) -> None:
    db = _small_db(tmp_path)
    connect(db).execute("PRAGMA journal_mode = DELETE").fetchone()
    conn = open_readonly(db, immutable=True)
    assert conn.execute("SELECT count(*) FROM meta").fetchone()[0] == 1
    assert not Path(f"{db}-shm").exists()


# --- retries ------------------------------------------------------------------------------


def test_retry_locked_retries_then_succeeds() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "ok"

    assert retry_locked(flaky, delays=(0, 0, 0)) == "ok" and len(calls) == 3


def test_retry_locked_gives_up_after_its_delays() -> None:
    calls = []

    def locked() -> None:
        calls.append(1)
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        retry_locked(locked, delays=(0, 0))
    assert len(calls) == 3


@pytest.mark.parametrize("errors,retried", [(connection.LOCK_ERRORS, False),
                                            (connection.READ_ERRORS, True)])
def test_retry_locked_retries_only_the_errors_it_is_given(errors, retried) -> None:
    calls = []

    def io_error() -> None:
        calls.append(1)
        raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(sqlite3.OperationalError):
        retry_locked(io_error, delays=(0,), errors=errors)
    assert len(calls) == (2 if retried else 1)


# --- counters -----------------------------------------------------------------------------

# The reference: what every counter must equal, written independently of tallies.py.
_IMAGE_RECOUNT = (
    "SELECT host_id, status, coalesce(error_type, ''), attempts, "
    f"next_attempt_at >= {EXHAUSTED}, count(*), sum(coalesce(file_size, 0)) "
    "FROM images GROUP BY 1, 2, 3, 4, 5")
_COLS = ("image_id", "gbif_id", "image_no", "host_id", "status", "error_type", "attempts",
         "next_attempt_at", "file_size", "last_attempt_at", "image_key", "urls")


def _image_tally(conn: sqlite3.Connection) -> set[tuple]:
    return set(conn.execute("SELECT host_id, status, error_type, attempts, parked, n, bytes "
                            "FROM image_tally WHERE n <> 0"))


def _activity(conn: sqlite3.Connection) -> dict[int, tuple]:
    return {r[0]: r[1:] for r in conn.execute("SELECT * FROM activity")}


def _event(acc: Counter, row: dict) -> None:
    """One finished attempt, as the activity counter must see it."""
    if row["last_attempt_at"] is None or row["error_type"] == FLAG_LEGACY:
        return
    m = int(row["last_attempt_at"] // 60)
    ok = row["status"] == "success"
    acc[(m, "attempts")] += 1
    acc[(m, "successes")] += ok
    acc[(m, "failures")] += row["status"].startswith("failed")
    acc[(m, "bytes")] += (row["file_size"] or 0) if ok else 0


def _as_activity(acc: Counter) -> dict[int, tuple]:
    minutes = {m for m, _ in acc}
    return {m: tuple(acc[(m, k)] for k in ("attempts", "successes", "failures", "bytes"))
            for m in minutes}


_state = st.fixed_dictionaries({
    "host_id": st.integers(1, 3),
    "status": st.sampled_from(IMAGE_STATUSES),
    "error_type": st.sampled_from([None, "timeout", "not_found", FLAG_LEGACY, FLAG_RAW]),
    "attempts": st.integers(0, 4),
    # due now, due later (a claim's lease: no counter changes) or parked
    "next_attempt_at": st.sampled_from([0.0, 500.0, EXHAUSTED]),
    "file_size": st.one_of(st.none(), st.integers(0, 10**6)),
    "last_attempt_at": st.one_of(st.none(), st.floats(0, 600, allow_nan=False)),
})


def _insert(conn: sqlite3.Connection, image_id: int, state: dict) -> None:
    row = {**state, "image_id": image_id, "gbif_id": image_id, "image_no": 0,
           "image_key": f"k{image_id}", "urls": f"https://h/{image_id}"}
    conn.execute(f"INSERT INTO images({', '.join(_COLS)}) VALUES "
                 f"({', '.join(':' + c for c in _COLS)})", row)


def _update(conn: sqlite3.Connection, image_id: int, state: dict) -> None:
    sets = ", ".join(f"{c} = :{c}" for c in state)
    conn.execute(f"UPDATE images SET {sets} WHERE image_id = :id", {**state, "id": image_id})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=st.lists(_state, max_size=12), after=st.lists(_state, max_size=6),
       updates=st.lists(st.tuples(st.integers(0, 17), _state), max_size=12),
       deletes=st.sets(st.integers(0, 17), max_size=4),
       results=st.lists(st.tuples(st.integers(0, 17), _state), max_size=10))
def test_counters_equal_a_recount_after_writes_and_a_merge(before, after, updates, deletes,
                                                          results) -> None:
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "main.db"
        conn = connect(db)
        create_schema(conn)
        rows: dict[int, dict] = {}
        with transaction(conn):
            for i, s in enumerate(before):  # rows there before the counters: recounted
                _insert(conn, i, s)
                rows[i] = s
            tallies.install_tallies(conn, fresh_load=False)
        events: Counter = Counter()
        for r in rows.values():
            _event(events, r)
        with transaction(conn):
            for i, s in enumerate(after, start=len(before)):  # inserts after: triggers
                _insert(conn, i, s)
                rows[i] = s
            for i, s in updates:
                if i in rows:
                    if s["last_attempt_at"] != rows[i]["last_attempt_at"]:
                        _event(events, s)
                    _update(conn, i, s)
                    rows[i] = s
            for i in deletes & rows.keys():
                conn.execute("DELETE FROM images WHERE image_id = ?", (i,))
                del rows[i]
        assert _image_tally(conn) == set(conn.execute(_IMAGE_RECOUNT))
        assert _activity(conn) == _as_activity(events)

        # an array task's finished results, folded in by the merge's bulk SQL
        task = task_db_path(tasks_dir_for(db), Shard(1, 1))
        task.parent.mkdir()
        tconn = connect(task, wal=False)
        create_schema(tconn)
        with transaction(tconn):
            for i, s in rows.items():
                _insert(tconn, i, s)
            for i, s in results:
                if i in rows and s["last_attempt_at"] is not None:
                    _update(tconn, i, s)
        merged = {i: dict(zip(_COLS[3:10], r, strict=True)) for i, *r in tconn.execute(
            f"SELECT image_id, {', '.join(_COLS[3:10])} FROM images")}
        tconn.close()
        for i, s in merged.items():
            if s["last_attempt_at"] is not None and s["last_attempt_at"] != rows[i][
                    "last_attempt_at"]:
                _event(events, s)
        merge_tasks(conn, db, force=True)
        assert not task.exists()
        assert _image_tally(conn) == set(conn.execute(_IMAGE_RECOUNT))
        assert _activity(conn) == _as_activity(events)
        # the per-row triggers are back after the merge
        with transaction(conn):
            conn.execute("UPDATE images SET attempts = attempts + 1")
        assert _image_tally(conn) == set(conn.execute(_IMAGE_RECOUNT))
        conn.close()


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["insert", "update", "delete"]),
                              st.integers(0, 6), st.sampled_from(
                                  ["pending", "partial", "done", "failed"])), max_size=25))
def test_gbif_counter_equals_a_recount(ops) -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE gbif_ids (gbif_id INTEGER PRIMARY KEY, n_images INTEGER, "
                 "n_success INTEGER DEFAULT 0, status TEXT DEFAULT 'pending', "
                 "completed_at REAL)")
    conn.execute(tallies.GBIF_TALLY.ddl)
    for _name, ddl in tallies.triggers(tallies.GBIF_TALLY):
        conn.execute(ddl)
    for op, gid, status in ops:
        if op == "insert":
            conn.execute("INSERT OR IGNORE INTO gbif_ids(gbif_id, n_images, status) "
                         "VALUES (?, 1, ?)", (gid, status))
        elif op == "update":
            conn.execute("UPDATE gbif_ids SET status = ? WHERE gbif_id = ?", (status, gid))
        else:
            conn.execute("DELETE FROM gbif_ids WHERE gbif_id = ?", (gid,))
    assert set(conn.execute("SELECT status, n FROM gbif_tally WHERE n <> 0")) == set(
        conn.execute("SELECT status, count(*) FROM gbif_ids GROUP BY status"))


def test_counter_tables_have_the_described_columns(tmp_path: Path) -> None:
    conn = connect(tmp_path / "x.db")
    create_schema(conn)
    for t in tallies.TALLIES:
        assert [r[1] for r in conn.execute(f"PRAGMA table_info({t.table})")] == t.columns()


def test_fresh_load_counters_equal_a_recount(tmp_path: Path) -> None:
    conn = connect(tmp_path / "x.db")
    create_schema(conn)
    with transaction(conn):
        for hid, n in ((1, 3), (2, 1)):
            conn.execute("INSERT INTO hosts(host_id, host, n_images) VALUES (?, ?, ?)",
                         (hid, f"h{hid}", n))
            for j in range(n):
                _insert(conn, hid * 10 + j, {"host_id": hid, "status": "pending",
                                             "error_type": None, "attempts": 0,
                                             "next_attempt_at": 0.0, "file_size": None,
                                             "last_attempt_at": None})
        conn.execute("INSERT INTO gbif_ids(gbif_id, n_images) SELECT gbif_id, count(*) "
                     "FROM images GROUP BY gbif_id")
        tallies.install_tallies(conn, fresh_load=True)
    assert _image_tally(conn) == set(conn.execute(_IMAGE_RECOUNT))
    assert tallies.tallies_installed(conn)
    assert conn.execute("SELECT n FROM gbif_tally").fetchall() == [(4,)]


# --- migrations -------------------------------------------------------------------------

# images_v as schema v1..v15 made it, for a database from before v16.
IMAGES_V_V15 = """CREATE VIEW images_v AS
    SELECT i.image_id, i.gbif_id, i.image_no, i.status, i.attempts,
           i.next_attempt_at, h.host, i.http_status, i.error_type, i.error_detail,
           i.file_path, i.file_size, i.sha256, i.width, i.height,
           i.last_attempt_at, i.image_key, i.urls,
           a.license, a.rights_holder, a.creator
      FROM images i
      JOIN hosts h ON h.host_id = i.host_id
      LEFT JOIN attributions a ON a.attribution_id = i.attribution_id"""
V15_COLUMNS = ["image_id", "gbif_id", "image_no", "status", "attempts", "next_attempt_at",
               "host", "http_status", "error_type", "error_detail", "file_path", "file_size",
               "sha256", "width", "height", "last_attempt_at", "image_key", "urls", "license",
               "rights_holder", "creator"]


def _shape(db: Path) -> set[tuple]:
    return set(q(db, "SELECT type, name, tbl_name, sql FROM sqlite_master "
                     "WHERE name NOT LIKE 'sqlite_%'"))


def test_migration_16_gives_a_v15_database_the_fresh_images_v(tmp_path: Path) -> None:
    from download_db.db.schema import SCHEMA_VERSION, migrate

    (tmp_path / "fresh").mkdir()
    (tmp_path / "old").mkdir()
    fresh = make_db(tmp_path / "fresh", ["http://127.0.0.9/a.jpg"])
    old = make_db(tmp_path / "old", ["http://127.0.0.9/a.jpg"])
    conn = connect(old)
    with transaction(conn):  # as the program before v16 left it
        conn.execute("DROP VIEW images_v")
        conn.execute(IMAGES_V_V15)
        conn.execute("UPDATE meta SET value = '15' WHERE key = 'schema_version'")
    old_rows = conn.execute("SELECT * FROM images_v").fetchall()
    assert [r[1] for r in conn.execute("PRAGMA table_info(images_v)")] == V15_COLUMNS
    assert migrate(conn) == SCHEMA_VERSION >= 16
    conn.close()
    cols = [r[1] for r in q(old, "PRAGMA table_info(images_v)")]
    assert cols[:len(V15_COLUMNS)] == V15_COLUMNS  # old SQL (even SELECT *) reads the same
    assert {"publisher", "fetched_url", "phash", "dhash", "dup_group", "near_group",
            "last_checked", "prev_error", "from_gbif_cache", "url_group"} <= set(cols)
    assert [r[:len(V15_COLUMNS)] for r in q(old, "SELECT * FROM images_v")] == old_rows
    assert q(old, "SELECT host, license, publisher, fetched_url FROM images_v") == [
        ("127.0.0.9", "CC BY 4.0", None, None)]
    # the fresh DDL and the migrated database have the same shape
    assert _shape(old) == _shape(fresh)


def test_processes_opening_a_frozen_database_at_once_all_get_in(tmp_path: Path) -> None:
    """Two downloads started together on a frozen (rollback-journal) database both
    switch it to WAL; SQLite refused all but one at once with 'database is locked'
    (about one round in ten of this test before connect() retried the switch)."""
    import threading

    for n in range(40):
        db = tmp_path / f"f{n}.db"
        c = sqlite3.connect(db)
        c.execute("PRAGMA journal_mode = DELETE")
        c.execute("CREATE TABLE t (x)")
        c.commit()
        c.close()
        start, errors = threading.Barrier(3), []

        def open_one(db: Path = db, start: threading.Barrier = start,
                     errors: list = errors) -> None:
            start.wait()
            try:
                conn = connect(db)
                conn.execute("SELECT count(*) FROM t").fetchone()
                conn.close()
            except sqlite3.OperationalError as e:
                errors.append(str(e))

        threads = [threading.Thread(target=open_one) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [], f"round {n}: {errors}"
        assert q(db, "PRAGMA journal_mode") == [("wal",)]
