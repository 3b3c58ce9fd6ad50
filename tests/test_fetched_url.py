"""images.fetched_url: the URL whose response became the file, from the worker to the export."""

from __future__ import annotations

import dataclasses
import os
import sqlite3 as stdlib_sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from download_db.cli.main import init_main
from download_db.config import DownloadConfig
from download_db.db.claims import Item, Result
from download_db.download import shared
from download_db.download.stage import run_download
from download_db.export.stage import run_export
from download_db.states import SUCCESS
from download_db.web import renditions
from tests.helpers import row, write_multimedia
from tests.imageserver import ImageServer

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def srv():
    with ImageServer("127.0.0.14") as s:
        yield s


def _download(tmp: Path, rows: list[list[str]]) -> Path:
    mm = write_multimedia(tmp / "m.txt", rows)
    db = tmp / "d.db"
    assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    cfg = DownloadConfig(db=db, install_path=tmp / "images", threads=2, per_host_concurrency=2,
                         per_host_rate=0, connect_timeout=2, read_timeout=4, deadline=8,
                         lease=30, wait_for_retries=0, lock_dir=tmp / "locks",
                         progress_every=1000, bar=False, user_agent="gbif-download-db-tests")
    run_download(cfg)
    return db


def _fetched(db: Path) -> dict[int, tuple[str, str | None, str]]:
    c = stdlib_sqlite3.connect(db)
    try:
        return {r[0]: r[1:] for r in c.execute(
            "SELECT gbif_id, status, fetched_url, urls FROM images")}
    finally:
        c.close()


def _exported(db: Path, out: Path) -> dict[int, str | None]:
    run_export(db, out)
    return {r["gbif_id"]: r["url"] for r in pq.read_table(out).to_pylist()}


def test_the_url_asked_for_is_recorded_and_exported(tmp_path, srv, monkeypatch):
    # the iNaturalist rule on the loopback host: the candidate is the original, the
    # request the 'large' rendition; an IIIF rendering is asked at the target size; a
    # redirect records the URL asked for, not where it ended
    monkeypatch.setattr(renditions, "RULES",
                        (dataclasses.replace(renditions.INATURALIST, hosts=(srv.host,)),))
    srv.reset_stats()
    db = _download(tmp_path, [
        row(1, srv.url("/photos/81/original.jpg")),
        row(2, srv.url("/iiif/2/f2/full/max/0/default.jpg")),
        row(3, srv.url("/redirect/1/r3.jpg")),
        row(4, srv.url("/img/plain4.jpg")),
    ])
    got = _fetched(db)
    want = {1: srv.url("/photos/81/large.jpg"),
            2: srv.url("/iiif/2/f2/full/!1024,1024/0/default.jpg"),
            3: srv.url("/redirect/1/r3.jpg"), 4: srv.url("/img/plain4.jpg")}
    assert {g: (s, u) for g, (s, u, _) in got.items()} == {g: (SUCCESS, u)
                                                           for g, u in want.items()}
    assert got[1][2] == srv.url("/photos/81/original.jpg")  # the candidate is unchanged
    assert _exported(db, tmp_path / "m.parquet") == want


def test_rows_saved_before_the_column_fall_back_to_the_first_candidate(tmp_path, srv):
    db = _download(tmp_path, [row(5, srv.url("/img/five.jpg")), row(6, srv.url("/img/six.jpg"))])
    c = stdlib_sqlite3.connect(db)
    with c:  # as a database migrated from v10 has them: NULL, one or several candidates
        c.execute("UPDATE images SET fetched_url = NULL")
        c.execute("UPDATE images SET urls = 'http://first.example/a.jpg' || char(10) || urls "
                  "WHERE gbif_id = 6")
    c.close()
    assert _exported(db, tmp_path / "m.parquet") == {
        5: srv.url("/img/five.jpg"), 6: "http://first.example/a.jpg"}


def test_a_follower_of_a_shared_fetch_gets_the_same_url(tmp_path):
    root = tmp_path / "images"
    (root / "tmp").mkdir(parents=True)
    temp = root / "tmp" / "t.jpg"
    temp.write_bytes(b"\xff\xd8 bytes")
    first = Item(1, 100, 0, "pending", 0, None, ["http://a.example/o.jpg"], 1)
    leader = Result(first, SUCCESS, file_path="000/000/100-00.jpg", file_size=8,
                    sha256="0" * 64, temp=str(temp), fetched_url="http://a.example/large.jpg")
    saved = shared.saved_from(leader, root)
    assert saved is not None
    follower = shared.link(root, Item(2, 200, 0, "pending", 0, None,
                                      ["http://a.example/o.jpg"], 1), saved)
    assert follower is not None and follower.fetched_url == "http://a.example/large.jpg"


def test_an_array_task_carries_it_through_the_merge(tmp_path, srv):
    rows = [row(7, srv.url("/iiif/2/a7/full/max/0/default.jpg")),
            row(8, srv.url("/img/eight.jpg"))]
    mm = write_multimedia(tmp_path / "m.txt", rows)
    db = tmp_path / "d.db"
    assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    cmd = [sys.executable, str(ROOT / "image_install_db.py"), "--db", str(db),
           "--install-path", str(tmp_path / "images"), "--threads", "2",
           "--per-host-rate", "0", "--timeout", "2", "--deadline", "8",
           "--wait-for-retries", "0", "--no-bar", "--lock-dir", str(tmp_path / "locks"),
           "--shard", "1/1"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=150, cwd=tmp_path,
                       env={**os.environ, "SLACK_WEBHOOK_URL": ""})
    assert p.returncode == 0, p.stderr
    assert _fetched(db)[7][1] is None  # still in the task's database
    assert init_main(["--db", str(db), "--finalize-only", "--no-bar"]) == 0
    got = _fetched(db)
    assert got[7][:2] == (SUCCESS, srv.url("/iiif/2/a7/full/!1024,1024/0/default.jpg"))
    assert got[8][:2] == (SUCCESS, srv.url("/img/eight.jpg"))
