"""The manifest's pages read through ADBC: types fixed on whole pages, keyset paging complete."""

from __future__ import annotations

import sqlite3 as stdlib_sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

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
