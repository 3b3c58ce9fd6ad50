"""verify: saved files walked oldest check first; missing or unsound ones requeued, resumably."""

from __future__ import annotations

import json
import signal
import sqlite3 as stdlib_sqlite3
import subprocess
import sys
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from download_db.cli.main import main
from download_db.db import upkeep
from download_db.db.connection import connect, transaction
from download_db.db.schema import SCHEMA_VERSION, apply_migration
from download_db.report.collect import collect, open_readonly
from download_db.report.text import render_text
from download_db.upkeep.throttle import BURST, Throttle
from download_db.upkeep.verify import VerifyConfig, run_verify, undecodable
from tests.helpers import q
from tests.identity_data import saved_db, synthetic

ROOT = Path(__file__).resolve().parent.parent


def _files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.jpg"))


def _verify(db: Path, root: Path, *extra: str) -> int:
    return main(["verify", "--db", str(db), "--install-path", str(root), "--no-bar", *extra])


def _rollup(db: Path) -> None:
    assert main(["finalize", "--db", str(db), "--no-bar"]) == 0


def _saved(tmp_path: Path, n: int, size: int = 400) -> tuple[Path, Path]:
    """A database of n saved images with their sizes recorded, as the downloader does."""
    db, root = saved_db(tmp_path, synthetic(n, size))
    conn = stdlib_sqlite3.connect(db)
    with conn:
        for image_id, rel in conn.execute("SELECT image_id, file_path FROM images").fetchall():
            conn.execute("UPDATE images SET file_size = ? WHERE image_id = ?",
                         ((root / rel).stat().st_size, image_id))
    conn.close()
    return db, root


def test_sound_files_are_stamped_and_missing_or_changed_ones_requeued(tmp_path: Path) -> None:
    db, root = _saved(tmp_path, 6)
    _rollup(db)
    files = _files(root)
    files[0].unlink()  # gone
    files[1].write_bytes(files[1].read_bytes() + b"\0")  # size changed
    data = bytearray(files[2].read_bytes())
    data[600:700] = bytes(100)  # same size, other bytes: only --hash sees it
    files[2].write_bytes(bytes(data))
    before = time.time()
    assert _verify(db, root) == 0
    rows = {r[0]: r[1:] for r in q(db, "SELECT image_id, status, error_type, last_checked "
                                         "FROM images ORDER BY image_id")}
    assert [v[0] for v in rows.values()] == ["pending", "pending"] + ["success"] * 4
    assert [v[1] for v in rows.values()][:2] == ["file_missing", "file_size_changed"]
    assert all(v[2] >= before for v in rows.values())
    assert not files[1].exists()  # an unsound file is removed: the download fetches it again
    # the gbifID roll-up followed, and the counters (triggers)
    assert q(db, "SELECT status, count(*) FROM gbif_ids GROUP BY status") == [
        ("done", 4), ("pending", 2)]
    assert q(db, "SELECT error_type, n FROM image_tally WHERE status = 'pending' AND n > 0 "
                 "ORDER BY 1") == [("file_missing", 1), ("file_size_changed", 1)]
    assert _verify(db, root, "--hash") == 0
    assert q(db, "SELECT error_type FROM images WHERE image_id = 3") == [("file_hash_changed",)]
    counts = json.loads(q(db, "SELECT counts FROM runs WHERE stage = 'verify' "
                              "ORDER BY run_id DESC LIMIT 1")[0][0])
    assert counts["checked"] == 4 and counts["requeued"] == {"file_hash_changed": 1}
    assert counts["bytes_read"] > 0


def test_decode_catches_a_corrupt_file_no_hash_can(tmp_path: Path) -> None:
    db, root = _saved(tmp_path, 3)
    bad = _files(root)[1]
    data = bytearray(bad.read_bytes())
    data[len(data) // 2:] = b"\xff" * (len(data) - len(data) // 2)  # scan data garbled
    bad.write_bytes(bytes(data))
    conn = stdlib_sqlite3.connect(db)
    with conn:  # a legacy-like row: no sha256 recorded, size as it is on disk now
        conn.execute("UPDATE images SET sha256 = NULL, file_size = ? WHERE image_id = 2",
                     (len(data),))
    conn.close()
    assert _verify(db, root, "--hash") == 0
    assert q(db, "SELECT count(*) FROM images WHERE status = 'success'") == [(3,)]
    assert _verify(db, root, "--decode") == 0
    assert q(db, "SELECT image_id, error_type FROM images WHERE status = 'pending'") == [
        (2, "file_undecodable")]
    assert undecodable(b"12345678") is not None
    assert undecodable(_files(root)[0].read_bytes()) is None


def test_limit_walks_never_checked_then_oldest_first(tmp_path: Path) -> None:
    db, root = _saved(tmp_path, 5)
    assert _verify(db, root, "--limit", "2") == 0
    first = q(db, "SELECT image_id FROM images WHERE last_checked IS NOT NULL ORDER BY 1")
    assert first == [(1,), (2,)]
    assert _verify(db, root, "--limit", "2") == 0  # the never-checked come before a re-check
    assert q(db, "SELECT image_id FROM images WHERE last_checked IS NULL") == [(5,)]
    t_second = q(db, "SELECT max(last_checked) FROM images")[0][0]
    assert _verify(db, root, "--limit", "3") == 0  # then 5, then the oldest checks: 1 and 2
    assert q(db, "SELECT image_id FROM images WHERE last_checked > ? ORDER BY 1",
             (t_second,)) == [(1,), (2,), (5,)]
    # --older-than: everything was checked moments ago, so nothing is due
    assert _verify(db, root, "--older-than", "1") == 0
    counts = json.loads(q(db, "SELECT counts FROM runs ORDER BY run_id DESC LIMIT 1")[0][0])
    assert counts["checked"] == 0


def test_walk_queries_are_index_seeks(tmp_path: Path) -> None:
    db, _ = _saved(tmp_path, 2)
    conn = stdlib_sqlite3.connect(db)
    for sql in (upkeep._NEVER, upkeep._OLDER):
        for shard, pos in (("", ""), (upkeep._SHARD, ""), (upkeep._SHARD, upkeep._POS)):
            plan = " ".join(r[3] for r in conn.execute(
                "EXPLAIN QUERY PLAN " + sql.format(shard=shard, pos=pos),
                {"after": -1, "cutoff": 1.0, "limit": 10, "n": 2, "k": 0, "lc": 0.5,
                 "lid": 3}))
            assert "USING INDEX images_checked" in plan or "USING COVERING INDEX" in plan, plan
            assert "TEMP B-TREE" not in plan, plan  # no sort: the index gives the order


def test_report_shows_when_the_collection_was_last_verified(tmp_path: Path) -> None:
    db, root = _saved(tmp_path, 2)
    conn = open_readonly(db)
    assert collect(conn, db=db)["verify"] == {"any_never_checked": True, "oldest_check": None}
    conn.close()
    assert _verify(db, root) == 0
    conn = open_readonly(db)
    d = collect(conn, db=db)
    conn.close()
    assert d["verify"]["any_never_checked"] is False and d["verify"]["oldest_check"] > 0
    assert "verified: every saved file since" in render_text(d)


def test_migration_adds_last_checked_and_its_index(tmp_path: Path) -> None:
    db, _ = _saved(tmp_path, 2)
    conn = stdlib_sqlite3.connect(db)
    with conn:  # as a database from before this migration: neither column nor index
        conn.execute("DROP INDEX images_checked")
        conn.execute("DROP VIEW images_v")  # it names the column since v16
        conn.execute("ALTER TABLE images DROP COLUMN last_checked")
    conn.close()
    c = connect(db)
    with transaction(c):  # the migration's own steps (later ones belong to other tests)
        apply_migration(c, 7)
    c.close()
    assert SCHEMA_VERSION >= 7
    assert "last_checked" in {r[1] for r in q(db, "PRAGMA table_info(images)")}
    assert q(db, "SELECT name FROM sqlite_master WHERE name = 'images_checked'")


def test_bad_flags_get_one_line(tmp_path: Path, capsys) -> None:
    db, root = _saved(tmp_path, 1)
    assert _verify(db, root, "--limit", "0") == 64
    assert _verify(db, root, "--shard", "4/3") == 64
    assert _verify(db, tmp_path / "nowhere") == 64
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gbif-download-db verify: error: --install-path")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 5_000_000), min_size=1, max_size=40),
       st.floats(1e5, 1e8), st.lists(st.floats(0, 0.2), min_size=40, max_size=40))
def test_throttle_holds_the_rate_over_any_reads(sizes: list[int], rate: float,
                                                gaps: list[float]) -> None:
    clock = [0.0]

    def sleep(s: float) -> None:
        clock[0] += s

    t = Throttle(rate, clock=lambda: clock[0], sleep=sleep)
    for n, gap in zip(sizes, gaps, strict=False):
        clock[0] += gap
        t.take(n)
    # everything taken was paid for at the rate, less at most one burst of credit
    assert clock[0] >= sum(sizes) / rate - BURST - 1e-6


def test_a_killed_verify_loses_nothing_and_the_next_run_finishes(tmp_path: Path) -> None:
    db, root = _saved(tmp_path, 40, size=200)
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from pathlib import Path\n"
              "from download_db.upkeep.verify import VerifyConfig, run_verify\n"
              f"run_verify(VerifyConfig(db=Path({str(db)!r}), install_path=Path({str(root)!r}),"
              " hash=True, batch=2, threads=1, max_mb_per_s=0.05, bar=False))\n")
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and p.poll() is None:
        if q(db, "SELECT count(*) FROM images WHERE last_checked IS NOT NULL")[0][0] >= 4:
            break
        time.sleep(0.1)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = q(db, "SELECT count(*) FROM images WHERE last_checked IS NOT NULL")[0][0]
    assert 4 <= done < 40, done
    stats = run_verify(VerifyConfig(db=db, install_path=root, hash=True, bar=False,
                                    older_than_days=1))
    assert stats.checked == 40 - done and stats.requeued == {}
    assert q(db, "SELECT count(*) FROM images WHERE status = 'success' "
                 "AND last_checked IS NOT NULL") == [(40,)]
