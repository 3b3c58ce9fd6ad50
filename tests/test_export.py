"""Export: a downloaded collection to Parquet/CSV/JSON Lines and back, every filter, bad input."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import sqlite3 as stdlib_sqlite3
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import download_db
from download_db.cli import export as export_cli
from download_db.cli.main import init_main
from download_db.config import DownloadConfig
from download_db.download.stage import run_download
from download_db.errors import DatabaseError, StorageError, UsageError
from download_db.export import manifest
from download_db.export.manifest import SCHEMA, make_filters
from download_db.export.stage import run_export
from tests.helpers import q, row, spy_stop_events, write_multimedia
from tests.imageserver import ImageServer

pytestmark = pytest.mark.timeout(120)

# (gbifID, path on server A or B, licence as given); 1003's two rows are two images
COLLECTION = [
    (1001, "A", "/img/one.jpg", "http://creativecommons.org/licenses/by/4.0/"),
    (1002, "A", "/img/two.jpg", "http://creativecommons.org/publicdomain/zero/1.0/"),
    (1003, "A", "/img/three.jpg", "CC BY-NC 4.0"),
    (1003, "A", "/png/three-b.png", "CC BY-NC 4.0"),
    (1004, "B", "/img/one.jpg", "© All rights reserved"),  # same bytes as 1001's
    (1005, "B", "/img/five.jpg", ""),
    (1006, "A", "/status/404", "cc-by"),  # fails: not in the manifest
]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """A downloaded collection: (db, image root, {gbifID: url})."""
    tmp = tmp_path_factory.mktemp("export")
    with ImageServer("127.0.0.2") as a, ImageServer("127.0.0.3") as b:
        servers = {"A": a, "B": b}
        urls = {(g, p): servers[s].url(p) for g, s, p, _ in COLLECTION}
        mm = write_multimedia(tmp / "m.txt", [
            row(g, urls[g, p], license_=lic, rights=f"Holder {g}", creator=f"Creator {g}")
            for g, _, p, lic in COLLECTION])
        db = tmp / "d.db"
        assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
        cfg = DownloadConfig(db=db, install_path=tmp / "images", threads=2,
                             per_host_concurrency=2, per_host_rate=0, connect_timeout=2,
                             read_timeout=2, deadline=4, lease=30, wait_for_retries=0,
                             lock_dir=tmp / "locks", progress_every=1000, bar=False,
                             user_agent="gbif-download-db-tests")
        run_download(cfg)
    return db, tmp / "images", urls


def test_parquet_round_trip(collection, tmp_path):
    db, root, urls = collection
    out = tmp_path / "manifest.parquet"
    summary = run_export(db, out)
    t = pq.read_table(out)
    assert t.schema == SCHEMA
    assert summary.images == t.num_rows == 6 and summary.records == 5
    got = {(r["gbif_id"], r["image_no"]): r for r in t.to_pylist()}
    assert sorted(got) == [(1001, 0), (1002, 0), (1003, 0), (1003, 1), (1004, 0), (1005, 0)]
    for r in got.values():
        data = (root / r["path"]).read_bytes()  # path is relative to the image root
        assert r["bytes"] == len(data) and r["width"] > 0 and r["height"] > 0
        assert r["rights_holder"] == f"Holder {r['gbif_id']}"
        assert r["creator"] == f"Creator {r['gbif_id']}"
        assert r["downloaded_at"].tzinfo is not None
        assert r["phash"] == _db_value(db, "phash", r["gbif_id"], r["image_no"])
    assert got[1001, 0]["url"] == urls[1001, "/img/one.jpg"]
    assert got[1001, 0]["license_short"] == "CC-BY"
    assert got[1002, 0]["license_short"] == "CC0"
    assert got[1003, 1]["license"] == "CC BY-NC 4.0"
    assert got[1004, 0]["license_short"] == "other"
    assert got[1005, 0]["license_short"] == "unknown" and got[1005, 0]["license"] is None
    assert got[1001, 0]["sha256"] == got[1004, 0]["sha256"]
    assert pq.ParquetFile(out).metadata.num_row_groups >= 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _db_value(db: Path, column: str, gbif_id: int, image_no: int) -> object:
    """A column of images, or None while the database has no such column."""
    c = stdlib_sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        if column not in {r[1] for r in c.execute("PRAGMA table_info(images)")}:
            return None
        return c.execute(f"SELECT {column} FROM images WHERE gbif_id = ? AND image_no = ?",
                         (gbif_id, image_no)).fetchone()[0]
    finally:
        c.close()


def test_csv_jsonl_and_read_manifest_agree(collection, tmp_path):
    db, _root, _urls = collection
    run_export(db, tmp_path / "m.parquet")
    run_export(db, tmp_path / "m.csv")  # format from the suffix
    run_export(db, tmp_path / "m.txt", fmt="jsonl")
    want = pq.read_table(tmp_path / "m.parquet").to_pandas()
    df = download_db.read_manifest(db)
    pd.testing.assert_frame_equal(df, want)
    csv = pacsv.read_csv(tmp_path / "m.csv").to_pandas()
    assert list(csv.columns) == SCHEMA.names
    assert csv["sha256"].tolist() == want["sha256"].tolist()
    assert csv["license_short"].tolist() == want["license_short"].tolist()
    lines = (tmp_path / "m.txt").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [list(r) for r in recs] == [SCHEMA.names] * len(want)
    assert [r["path"] for r in recs] == want["path"].tolist()
    assert recs[0]["downloaded_at"].endswith("Z")


def _ids(db: Path, **filters) -> list[tuple[int, int]]:
    df = download_db.read_manifest(db, **filters)
    return list(zip(df["gbif_id"], df["image_no"], strict=True))


def test_filters(collection):
    db, _root, _urls = collection
    assert _ids(db, license="CC0,cc-by") == [(1001, 0), (1002, 0)]
    assert _ids(db, license=["CC-BY-NC", "unknown"]) == [(1003, 0), (1003, 1), (1005, 0)]
    assert _ids(db, host="127.0.0.3") == [(1004, 0), (1005, 0)]
    assert _ids(db, host=["127.0.0.3"], license="other") == [(1004, 0)]
    assert len(_ids(db, since="2000-01-01")) == 6
    tomorrow = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    assert _ids(db, since=tomorrow.isoformat()) == []
    assert _ids(db, since=tomorrow.date()) == []
    # 1004 has the same bytes as 1001, downloaded under a later image id
    assert (1004, 0) not in _ids(db, exclude_duplicates=True)
    assert len(_ids(db, exclude_duplicates=True)) == 5
    # nothing is flagged until the identity stage has run
    assert len(_ids(db, exclude_placeholders=True)) == 6


def test_exclude_placeholders_uses_the_flag_once_it_exists(collection, tmp_path):
    db = tmp_path / "copy.db"
    shutil.copy(collection[0], db)
    c = stdlib_sqlite3.connect(db)
    c.execute("ALTER TABLE images ADD COLUMN placeholder INTEGER")
    c.execute("UPDATE images SET placeholder = 1 WHERE gbif_id = 1002")
    c.commit()
    c.close()
    assert (1002, 0) not in _ids(db, exclude_placeholders=True)
    assert len(_ids(db, exclude_placeholders=True)) == 5
    assert download_db.read_manifest(db)["placeholder"].tolist().count(True) == 1


def test_exclude_duplicates_keeps_one_per_near_group(collection, tmp_path):
    db = tmp_path / "copy.db"
    shutil.copy(collection[0], db)
    c = stdlib_sqlite3.connect(db)
    if "near_group" not in {r[1] for r in c.execute("PRAGMA table_info(images)")}:
        c.execute("ALTER TABLE images ADD COLUMN near_group INTEGER")
    c.execute("UPDATE images SET near_group = NULL")
    # 1002 and 1005: different bytes, one picture (as dedupe groups pHash neighbours)
    c.execute("UPDATE images SET near_group = (SELECT min(image_id) FROM images WHERE gbif_id "
              "IN (1002, 1005)) WHERE gbif_id IN (1002, 1005)")
    c.commit()
    c.close()
    assert _ids(db, exclude_duplicates=True) == [(1001, 0), (1002, 0), (1003, 0), (1003, 1)]


def test_the_hot_query_walks_the_gbif_index(collection):
    db = collection[0]
    c = stdlib_sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        src = manifest.prepare(c, make_filters())
        plan = " ".join(r[3] for r in c.execute("EXPLAIN QUERY PLAN " + manifest.query(
            make_filters(), src), {"g": 0, "n": 0}))
    finally:
        c.close()
    assert "USING INDEX images_gbif_image" in plan and "SCAN" not in plan.split("images_gbif")[0]


def _cli(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    export_cli.add_arguments(p)
    return p.parse_args(list(argv))


def test_cli_flags_reach_the_export(collection, tmp_path):
    db = collection[0]
    out = tmp_path / "cc.csv"
    assert export_cli.run(_cli("--db", str(db), "--out", str(out), "--license", "CC0",
                               "--license", "CC-BY", "--exclude-duplicates")) == 0
    assert pacsv.read_csv(out).column("gbif_id").to_pylist() == [1001, 1002]
    assert (tmp_path / "derived_dataset.csv").read_text() == "datasetKey,count\n"
    text = (tmp_path / "CITATION.txt").read_text()
    assert "2 images of 2 GBIF occurrence records" in text
    assert "--license CC0,CC-BY --exclude-duplicates" in text
    assert "DOI is not in the database" in text


def test_unknown_licence_names_the_flag(collection, tmp_path):
    with pytest.raises(UsageError, match=r"--license: unknown licence 'CC-BY-4'"):
        export_cli.run(_cli("--db", str(collection[0]), "--out", str(tmp_path / "x.parquet"),
                            "--license", "CC0,CC-BY-4"))
    assert not list(tmp_path.iterdir())


def test_bad_since_and_host_name_the_flag(collection, tmp_path):
    with pytest.raises(UsageError, match="--since 'yesterday'"):
        make_filters(since="yesterday")
    with pytest.raises(UsageError, match="--host nowhere.example"):
        run_export(collection[0], tmp_path / "x.parquet", filters=make_filters(
            host="nowhere.example"))
    assert not list(tmp_path.iterdir())


def test_unwritable_output(collection, tmp_path):
    db = collection[0]
    with pytest.raises(StorageError, match="--out .*does not exist"):
        run_export(db, tmp_path / "missing" / "m.parquet")
    with pytest.raises(StorageError, match="is a directory"):
        run_export(db, tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        # root ignores permissions; nobody can create files in /proc/1
        target = ro if not os.access(ro, os.W_OK) else Path("/proc/1")
        with pytest.raises(StorageError, match="--out .*cannot write there"):
            run_export(db, target / "m.parquet")
    finally:
        ro.chmod(0o700)


def test_missing_database(tmp_path):
    with pytest.raises(DatabaseError, match="--db .*no such database"):
        run_export(tmp_path / "nope.db", tmp_path / "m.parquet")


def _live_task(path: Path) -> None:
    """A task database whose download run is alive (this host, this pid, a fresh
    heartbeat)."""
    c = stdlib_sqlite3.connect(path)
    c.execute("CREATE TABLE runs (run_id INTEGER PRIMARY KEY, stage TEXT, hostname TEXT, "
              "pid INTEGER, heartbeat_at REAL, outcome TEXT)")
    c.execute("INSERT INTO runs VALUES (1, 'download', ?, ?, ?, 'running')",
              (socket.gethostname(), os.getpid(), time.time()))
    c.commit()
    c.close()


def test_refuses_while_an_array_task_writes(collection, tmp_path):
    db = tmp_path / "d.db"
    shutil.copy(collection[0], db)
    tasks = tmp_path / "d.db.tasks"
    tasks.mkdir()
    _live_task(tasks / "task-0001-of-0002.db")
    with pytest.raises(DatabaseError, match="task-0001-of-0002.db may still be writing"):
        run_export(db, tmp_path / "m.parquet")
    assert not (tmp_path / "m.parquet").exists()
    assert run_export(db, tmp_path / "m.parquet", force=True).images == 6


def test_a_failed_export_leaves_no_file(collection, tmp_path, monkeypatch):
    out = tmp_path / "m.parquet"
    out.write_bytes(b"the previous export")
    real = manifest.batches

    def broken(conn, f, src):
        yield from real(conn, f, src)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(manifest, "batches", broken)
    with pytest.raises(OSError, match="No space left"):
        run_export(collection[0], out)
    assert out.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.parquet"]


def test_empty_export_is_a_valid_file(collection, tmp_path):
    out = tmp_path / "none.parquet"
    assert run_export(collection[0], out, filters=make_filters(license="PD")).images == 0
    t = pq.read_table(out)
    assert t.num_rows == 0 and t.schema == SCHEMA
    assert isinstance(t, pa.Table)


def test_command_line_errors_are_one_line(collection, tmp_path, capsys):
    from download_db.cli.main import main

    db = str(collection[0])
    cases = [(["--license", "CC0,CC-BY-4"], 64, "--license: unknown licence 'CC-BY-4'"),
             (["--since", "soon"], 64, "--since 'soon': not a date"),
             (["--out", str(tmp_path / "no" / "m.csv")], 73, "does not exist")]
    for extra, code, text in cases:
        argv = ["export", "--db", db, "--out", str(tmp_path / "m.parquet"), *extra]
        assert main(argv) == code
        err = capsys.readouterr().err
        assert text in err and err.count("\n") == 1 and "Traceback" not in err
    assert main(["export", "--db", db, "--out", str(tmp_path / "m.parquet")]) == 0
    assert pq.read_table(tmp_path / "m.parquet").num_rows == 6


# -- its runs row ------------------------------------------------------------------------

def _export_runs(db: Path) -> list[tuple]:
    return [(o, m, json.loads(c) if c else None) for o, m, c in q(
        db, "SELECT outcome, message, counts FROM runs WHERE stage = 'export' ORDER BY run_id")]


@pytest.fixture
def copy(collection, tmp_path) -> Path:
    """The collection's database, to write runs rows into (without the other tests')."""
    db = tmp_path / "c.db"
    shutil.copy(collection[0], db)
    c = stdlib_sqlite3.connect(db)
    with c:
        c.execute("DELETE FROM runs WHERE stage = 'export'")
    c.close()
    return db


def test_an_export_is_recorded_with_its_counts(copy, tmp_path):
    run_export(copy, tmp_path / "none.csv", filters=make_filters(license="PD"))
    s = run_export(copy, tmp_path / "m.csv", filters=make_filters(license="CC0,CC-BY"))
    (empty, (outcome, message, counts)) = _export_runs(copy)
    assert (empty[2]["images"], empty[2]["records"]) == (0, 0)
    assert (outcome, message) == ("ok", None)
    assert {k: counts[k] for k in ("images", "records", "datasets", "format")} == {
        "images": s.images, "records": s.records, "datasets": s.datasets, "format": "csv"}
    assert s.images == 2 and counts["seconds"] >= 0


def test_a_failed_export_is_one_line_and_a_failed_run(copy, tmp_path, monkeypatch, capsys):
    from download_db.cli.main import main

    real = manifest.batches

    def broken(conn, f, src):
        yield from real(conn, f, src)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(manifest, "batches", broken)
    assert main(["export", "--db", str(copy), "--out", str(tmp_path / "m.parquet")]) == 74
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
    assert _export_runs(copy) == [("failed", "OSError: [Errno 28] No space left on device",
                                   {"images": 6, "records": 5})]
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("c.db")] == []


def test_a_stop_signal_ends_it_as_an_interrupted_run(copy, tmp_path, monkeypatch):
    import signal

    from download_db.errors import Interrupted
    from download_db.export import stage

    stops = spy_stop_events(monkeypatch, stage)
    real = manifest.batches

    def stopped_after_one(conn, f, src):  # a scheduler's SIGTERM after the first batch
        batch = next(iter(real(conn, f, src)))
        yield batch
        os.kill(os.getpid(), signal.SIGTERM)
        assert stops[0].wait(10)
        yield batch

    monkeypatch.setattr(manifest, "batches", stopped_after_one)
    out = tmp_path / "m.parquet"
    out.write_bytes(b"the previous export")
    with pytest.raises(Interrupted, match="stopped by a signal"):
        run_export(copy, out)
    assert _export_runs(copy) == [("interrupted", "stopped by a signal",
                                   {"images": 6, "records": 5})]
    assert out.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("c.db")] == [
        "m.parquet"]


def test_not_recorded_while_an_array_runs_or_an_init_stage_holds_the_database(copy, tmp_path):
    import io

    from download_db.db.stagelock import stage_lock

    with stage_lock(copy, exclusive=True, what="gbif-download-db finalize"):
        said = io.StringIO()
        assert run_export(copy, tmp_path / "m.parquet", echo=said).images == 6
    assert "export: this run is not recorded in the runs table: " in said.getvalue()
    assert "in use by gbif-download-db finalize" in said.getvalue()
    tasks = tmp_path / "c.db.tasks"
    tasks.mkdir()
    _live_task(tasks / "task-0001-of-0002.db")
    before = copy.read_bytes()
    said = io.StringIO()
    assert run_export(copy, tmp_path / "m.parquet", force=True, echo=said).images == 6
    assert "task-0001-of-0002.db" in said.getvalue() and "not recorded" in said.getvalue()
    assert copy.read_bytes() == before  # tasks read it immutable: not a byte written
    assert _export_runs(copy) == []


def test_a_frozen_database_stays_frozen(copy, tmp_path):
    """Recording the run keeps the journal mode: array tasks started later can read it."""
    from download_db.arrays import plan
    from download_db.db.connection import connect

    c = connect(copy)
    assert plan.freeze(c)
    c.close()
    assert plan.is_frozen(copy)
    assert run_export(copy, tmp_path / "m.parquet").images == 6
    assert plan.is_frozen(copy) and [o for o, _, _ in _export_runs(copy)] == ["ok"]
