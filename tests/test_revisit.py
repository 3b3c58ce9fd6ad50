"""Revisiting old permanent failures: fair shares, oldest first, prev_error kept, downloadable."""

from __future__ import annotations

import sqlite3 as stdlib_sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from download_db.cli.main import init_main, main
from download_db.config import DownloadConfig
from download_db.db import upkeep
from download_db.db.connection import connect, transaction
from download_db.db.schema import SCHEMA_VERSION, apply_migration
from download_db.download.stage import run_download
from download_db.upkeep.revisit import fair_shares
from tests.helpers import q, row, write_multimedia
from tests.imageserver import ImageServer

DAY = 86400.0


@given(st.dictionaries(st.integers(1, 50), st.integers(0, 40), max_size=12),
       st.integers(0, 200))
def test_fair_shares_fill_the_limit_evenly(available: dict[int, int], limit: int) -> None:
    out = fair_shares(available, limit)
    assert sum(out.values()) == min(limit, sum(available.values()))
    assert all(0 <= out[h] <= available[h] for h in available)
    hungry = [h for h in available if out[h] < available[h]]
    for h in hungry:  # a host left wanting got as much as anyone, give or take one
        assert all(out[h] >= out[g] - 1 for g in available)


def _db(tmp_path: Path, per_host: dict[str, int]) -> Path:
    rows, gid = [], 5_000_000_000
    for host, n in per_host.items():
        for i in range(n):
            rows.append(row(gid, f"http://{host}/x/{i}.jpg"))
            gid += 1
    db = tmp_path / "d.db"
    mm = write_multimedia(tmp_path / "m.txt", rows)
    assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    return db


def _fail(db: Path, host: str, ages_days: list[float], now: float) -> None:
    """This host's images failed for good, their last attempts ``ages_days`` ago."""
    conn = stdlib_sqlite3.connect(db)
    with conn:
        ids = [r[0] for r in conn.execute(
            "SELECT image_id FROM images_v WHERE host = ? ORDER BY image_id", (host,))]
        for image_id, age in zip(ids, ages_days, strict=True):
            conn.execute("UPDATE images SET status = 'failed_permanent', attempts = 1, "
                         "http_status = 404, error_type = 'http_404', error_detail = "
                         "'HTTP 404: Not Found', last_attempt_at = ? WHERE image_id = ?",
                         (now - age * DAY, image_id))
    conn.close()
    assert main(["finalize", "--db", str(db), "--no-bar"]) == 0


def test_oldest_first_fair_across_hosts_and_the_old_outcome_kept(tmp_path: Path,
                                                                 capsys) -> None:
    db = _db(tmp_path, {"a.example.org": 6, "b.example.org": 1, "c.example.org": 3})
    now = time.time()
    _fail(db, "a.example.org", [40, 90, 35, 60, 31, 2], now)  # 5 old, 1 recent
    _fail(db, "b.example.org", [100], now)
    _fail(db, "c.example.org", [45, 1, 50], now)
    assert main(["verify", "--db", str(db), "--install-path", str(tmp_path),
                 "--revisit-failed-older-than", "30", "--revisit-limit", "4",
                 "--revisit-only", "--no-bar"]) == 0
    assert "revisit: 4 permanent failures" in capsys.readouterr().out
    reopened = q(db, "SELECT host, round((? - next_attempt_at) / 86400) FROM images_v "
                     "WHERE status = 'pending' ORDER BY 1, 2", (now,))
    # 4 over 3 hosts: one each, the extra to the first host; each host's oldest first
    assert reopened == [("a.example.org", 60.0), ("a.example.org", 90.0),
                        ("b.example.org", 100.0), ("c.example.org", 50.0)]
    prev = q(db, "SELECT attempts, error_type, prev_error FROM images WHERE status = 'pending'")
    assert all(a == 0 and e is None for a, e, _ in prev)
    assert all(p.startswith("http_404 (HTTP 404) at ") and p.endswith(": HTTP 404: Not Found")
               for _, _, p in prev)
    # their gbifIDs are no longer 'failed'; the counters followed
    assert q(db, "SELECT count(*) FROM gbif_ids WHERE status = 'pending'") == [(4,)]
    assert q(db, "SELECT sum(n) FROM image_tally WHERE status = 'pending'") == [(4,)]
    # a second run takes the next oldest, and never a recent failure
    assert main(["verify", "--db", str(db), "--install-path", str(tmp_path),
                 "--revisit-failed-older-than", "30", "--revisit-only", "--no-bar"]) == 0
    left = q(db, "SELECT round((? - last_attempt_at) / 86400) FROM images "
                 "WHERE status = 'failed_permanent' ORDER BY 1", (now,))
    assert left == [(1.0,), (2.0,)]


def test_revisit_queries_walk_the_failure_index(tmp_path: Path) -> None:
    db = _db(tmp_path, {"a.example.org": 1})
    conn = stdlib_sqlite3.connect(db)
    for sql in (upkeep._DUE, upkeep._DUE_COUNT):
        plan = " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, (1, 0.0, 10)))
        assert "INDEX images_failed" in plan and "TEMP B-TREE" not in plan, plan


@pytest.mark.timeout(120)
def test_a_fixed_link_is_downloaded_after_its_revisit(tmp_path: Path) -> None:
    with ImageServer("127.0.0.7") as srv:
        db = tmp_path / "d.db"
        mm = write_multimedia(tmp_path / "m.txt", [
            row(5_100_000_000, srv.url("/flaky/fixed.jpg?fail=1&code=404"))])
        assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
        cfg = DownloadConfig(db=db, install_path=tmp_path / "images", threads=2,
                             per_host_rate=0, lease=30, deadline=4, read_timeout=2,
                             connect_timeout=2, wait_for_retries=0,
                             lock_dir=tmp_path / "locks", progress_every=1000, bar=False,
                             user_agent="gbif-download-db-tests", min_free=0)
        run_download(cfg)
        assert q(db, "SELECT status, error_type FROM images") == [("failed_permanent",
                                                                  "http_404")]
        assert q(db, "SELECT status FROM gbif_ids") == [("failed",)]
        run_download(cfg)  # a permanent failure is final without a revisit
        assert q(db, "SELECT status FROM images") == [("failed_permanent",)]
        assert main(["verify", "--db", str(db), "--install-path", str(tmp_path / "images"),
                     "--revisit-failed-older-than", "0", "--revisit-only", "--no-bar"]) == 0
        run_download(cfg)
    got = q(db, "SELECT status, attempts, error_type, prev_error FROM images")
    assert got[0][:3] == ("success", 1, None) and got[0][3].startswith("http_404 (HTTP 404)")
    assert q(db, "SELECT status FROM gbif_ids") == [("done",)]


def test_migration_adds_prev_error_and_the_failure_index(tmp_path: Path) -> None:
    db = _db(tmp_path, {"a.example.org": 1})
    conn = stdlib_sqlite3.connect(db)
    with conn:  # as a database from before this migration: neither column nor index
        conn.execute("DROP INDEX images_failed")
        conn.execute("DROP VIEW images_v")  # it names the column since v16
        conn.execute("ALTER TABLE images DROP COLUMN prev_error")
    conn.close()
    c = connect(db)
    with transaction(c):  # the migration's own steps (later ones belong to other tests)
        apply_migration(c, 10)
    c.close()
    assert SCHEMA_VERSION >= 10
    assert "prev_error" in {r[1] for r in q(db, "PRAGMA table_info(images)")}
    assert q(db, "SELECT name FROM sqlite_master WHERE name = 'images_failed'")


def test_revisit_flags_are_checked(tmp_path: Path, capsys) -> None:
    db = _db(tmp_path, {"a.example.org": 1})
    code = main(["verify", "--db", str(db), "--install-path", str(tmp_path),
                 "--revisit-only"])
    assert code == 64
    assert "--revisit-only needs --revisit-failed-older-than" in capsys.readouterr().err
