"""Manifest pages through ADBC: types on whole pages, complete keyset paging, ordered readers."""

from __future__ import annotations

import random
import sqlite3 as stdlib_sqlite3
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from download_db.cli.main import main
from download_db.db import connection
from download_db.export import manifest, pages
from download_db.export.stage import run_export
from tests.helpers import PSILOCYBE

pytestmark = pytest.mark.timeout(120)


def test_a_column_null_in_its_first_rows_keeps_its_type(tmp_path):
    # ADBC's driver types a column from the rows of the first batch; a page is one batch
    db = tmp_path / "t.db"
    c = stdlib_sqlite3.connect(db)
    c.execute("CREATE TABLE t (k INTEGER, s TEXT, x REAL)")
    c.executemany("INSERT INTO t VALUES (?, ?, ?)",
                  [(k, None if k < 3000 else f"v{k}", None if k < 3000 else k / 2)
                   for k in range(4000)])
    c.commit()
    c.close()
    types = {"k": pa.int32(), "s": pa.string(), "x": pa.float64()}
    with pages.PageReader(db, "SELECT k, s, x FROM t WHERE k > ? ORDER BY k LIMIT 5000",
                          types, 5000) as rd:
        t = rd.page(-1)
    assert t.schema == pa.schema(types) and t.num_rows == 4000
    assert t.column("s")[3999].as_py() == "v3999" and t.column("s")[0].as_py() is None
    assert t.column("x")[3001].as_py() == 1500.5


def test_the_reader_cannot_write(tmp_path):
    db = tmp_path / "t.db"
    stdlib_sqlite3.connect(db).execute("CREATE TABLE t (k INTEGER)").connection.close()
    rd = pages.PageReader(db, "INSERT INTO t VALUES (?)", {"k": pa.int64()}, 10)
    with rd, pytest.raises(Exception, match="(?i)readonly|read-only|query_only|attempt"):
        rd.page(1)


def test_small_pages_give_the_same_manifest(tmp_path, monkeypatch):
    db = tmp_path / "d.db"
    assert main(["ingest", "--db", str(db), "--multimedia", str(PSILOCYBE), "--no-bar"]) == 0
    c = connection.connect(db)
    c.execute("UPDATE images SET status = 'success', file_size = 1000, width = 10, "
              "height = 10, sha256 = printf('%064d', image_id), last_attempt_at = 1.79e9, "
              "file_path = printf('%d-%02d.jpg', gbif_id, image_no)")
    c.close()
    run_export(db, tmp_path / "one.parquet")
    monkeypatch.setattr(manifest, "BATCH_ROWS", 7)  # pages end inside gbifIDs too
    run_export(db, tmp_path / "many.parquet")
    one, many = (pq.read_table(tmp_path / n) for n in ("one.parquet", "many.parquet"))
    assert one.num_rows > 1000 and one.equals(many)
    keys = list(zip(one.column("gbif_id").to_pylist(), one.column("image_no").to_pylist(),
                    strict=True))
    assert keys == sorted(set(keys))  # in key order, each image once


def test_database_path_of_a_connection(tmp_path):
    db = tmp_path / "d.db"
    c = stdlib_sqlite3.connect(db)
    assert pages.database_path(c) == Path(db)
    c.close()


@given(lo=st.integers(0, 10 ** 10), span=st.integers(0, 10 ** 9), rows=st.integers(0, 10 ** 8),
       page=st.integers(1, 10 ** 5))
def test_key_ranges_cover_every_gbif_id_once(lo, span, rows, page):
    hi = lo + span
    r = pages.key_ranges(lo, hi, rows, page)
    assert r[0][0] == lo and r[-1][1] == hi + 1
    assert all(a < b for a, b in r) and all(r[k][1] == r[k + 1][0] for k in range(len(r) - 1))


def test_in_order_keeps_the_order_of_the_ranges():
    ranges = [(k, k + 1) for k in range(40)]

    def read(start: int, end: int):
        for j in range(3):
            time.sleep(random.random() / 500)  # readers finish out of order
            yield (start, j)

    got = list(pages.in_order(ranges, read, readers=3))
    assert got == [(k, j) for k in range(40) for j in range(3)]


def test_in_order_hands_on_a_reader_error_and_stops_the_others():
    started: list[int] = []

    def read(start: int, end: int):
        started.append(start)
        if start == 5:
            raise OSError("disk I/O error")
        yield start

    with pytest.raises(OSError, match="disk I/O"):
        list(pages.in_order([(k, k + 1) for k in range(1000)], read, readers=2))
    assert len(started) < 20  # only a few ranges ahead of the consumer were begun


def test_an_abandoned_export_closes_its_readers():
    started: list[int] = []
    closed: list[int] = []

    def read(start: int, end: int):
        started.append(start)
        try:
            yield from range(1000)
        finally:
            closed.append(start)

    before = threading.active_count()
    it = pages.in_order([(k, k + 1) for k in range(10)], read, readers=2)
    assert next(it) == 0
    it.close()  # the writer stopped (an error, a full disk): the readers end with it
    assert threading.active_count() == before
    assert started and sorted(closed) == sorted(started)
