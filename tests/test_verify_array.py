"""verify as a job array: tasks read the frozen database, write verdicts; the merge applies them."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3 as stdlib_sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from download_db.arrays import plan
from download_db.arrays.verdicts import verdict_dbs
from download_db.cli.main import main
from download_db.db import upkeep
from download_db.db.connection import connect
from download_db.db.schema import INDEX_CHECKED
from download_db.upkeep.verify import VerifyConfig, run_verify
from tests.helpers import q
from tests.test_verify import _files, _rollup, _saved, _verify

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parent.parent
NO_ARRAY = {k: v for k, v in os.environ.items() if not k.startswith(("SGE_", "SLURM_"))}


def _collection(tmp_path: Path, n: int = 12) -> tuple[Path, Path]:
    """Saved images, rolled up and frozen, with damage: two files gone, one truncated,
    one with other bytes of the same size (only --hash sees that one)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    db, root = _saved(tmp_path, n, size=200)
    _rollup(db)
    files = _files(root)
    files[0].unlink()
    files[4].unlink()
    files[5].write_bytes(files[5].read_bytes()[:100])
    data = bytearray(files[7].read_bytes())
    data[300:400] = bytes(100)
    files[7].write_bytes(bytes(data))
    assert plan.is_frozen(db)
    return db, root


def _copy(src: Path, dst: Path) -> tuple[Path, Path]:
    shutil.copytree(src, dst)
    return dst / "d.db", dst / "images"


def _task(db: Path, root: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "download_db", "verify", "--db", str(db), "--install-path",
         str(root), "--no-bar", "--threads", "2", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**NO_ARRAY, **(env or {})})


def _state(db: Path, root: Path) -> dict:
    """What a verify decides, without the clock: rows, roll-up, counters, files."""
    return {
        "images": q(db, "SELECT image_id, status, attempts, next_attempt_at, error_type, "
                        "error_detail, file_path, file_size, sha256, width, "
                        "last_checked IS NULL, claimed_by FROM images ORDER BY image_id"),
        "gbif_ids": q(db, "SELECT gbif_id, n_images, n_success, status, completed_at IS NULL "
                          "FROM gbif_ids ORDER BY gbif_id"),
        "tally": q(db, "SELECT * FROM image_tally WHERE n > 0 ORDER BY 1, 2, 3"),
        "files": sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()),
    }


def _merge(db: Path, *extra: str) -> int:
    return main(["merge", "--db", str(db), *extra])


def test_a_three_task_array_and_a_merge_do_what_one_local_verify_does(tmp_path: Path) -> None:
    db, root = _collection(tmp_path / "base")
    local_db, local_root = _copy(tmp_path / "base", tmp_path / "local")
    assert _verify(local_db, local_root, "--hash") == 0
    main_bytes = db.read_bytes()
    procs = [_task(db, root, "--hash", "--shard", "1/3"), _task(db, root, "--hash", "--shard",
                                                                 "2/3"),
             _task(db, root, "--hash", env={"SGE_TASK_ID": "3", "SGE_TASK_FIRST": "1",
                                            "SGE_TASK_LAST": "3", "SGE_TASK_STEPSIZE": "1"})]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "gbif-download-db merge" in out
    assert db.read_bytes() == main_bytes  # the tasks only read the main database
    paths = verdict_dbs(plan.tasks_dir_for(db))
    assert [p.name for p in paths] == [f"verify-000{k}-of-0003.db" for k in (1, 2, 3)]
    # every saved image has exactly one verdict, in the task its id belongs to
    seen = [(k, i) for k, path in enumerate(paths)
            for (i,) in q(path, "SELECT image_id FROM verdicts")]
    assert sorted(i for _, i in seen) == list(range(1, 13))
    assert all(i % 3 == k for k, i in seen)
    assert _merge(db) == 0
    assert _state(db, root) == _state(local_db, local_root)
    assert verdict_dbs(plan.tasks_dir_for(db)) == []
    assert plan.is_frozen(db)  # ready for the next array
    assert q(db, "SELECT key FROM meta WHERE key LIKE 'verdicts_applied:%'") == []
    assert q(db, "SELECT count(*), group_concat(DISTINCT shard) FROM runs WHERE "
                 "stage = 'verify'") == [(3, "1/3,2/3,3/3")]
    # the local verify's own view agrees: nothing left for it to requeue
    assert q(db, "SELECT error_type, count(*) FROM images WHERE status = 'pending' "
                 "GROUP BY 1 ORDER BY 1") == [("file_hash_changed", 1), ("file_missing", 2),
                                              ("file_size_changed", 1)]


def test_a_killed_task_continues_and_ends_as_one_local_verify(tmp_path: Path) -> None:
    db, root = _collection(tmp_path / "base", n=40)
    # every file checked once already: the task walks the oldest checks (a keyset walk,
    # since its frozen database does not move a checked row to the end)
    assert _verify(db, root, "--shard", "none") == 0
    assert _merge(db) == 0  # freezes it again
    local_db, local_root = _copy(tmp_path / "base", tmp_path / "local")
    assert _verify(local_db, local_root, "--hash") == 0
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from pathlib import Path\n"
              "from download_db.upkeep.verify import VerifyConfig, run_verify\n"
              f"run_verify(VerifyConfig(db=Path({str(db)!r}), install_path=Path({str(root)!r}),"
              " hash=True, batch=2, threads=1, max_mb_per_s=0.05, shard='1/1', bar=False))\n")
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=NO_ARRAY)
    path = plan.tasks_dir_for(db) / "verify-0001-of-0001.db"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and p.poll() is None:
        if path.exists() and q(path, "SELECT count(*) FROM verdicts")[0][0] >= 4:
            break
        time.sleep(0.1)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = q(path, "SELECT count(*) FROM verdicts")[0][0]
    assert 4 <= done < 37, done
    stats = run_verify(VerifyConfig(db=db, install_path=root, hash=True, shard="1/1", bar=False))
    assert stats.checked == 37 - done  # the 3 files gone or truncated are no longer saved
    assert sorted(r[0] for r in q(path, "SELECT image_id FROM verdicts")) == [
        r[0] for r in q(db, "SELECT image_id FROM images WHERE status = 'success' ORDER BY 1")]
    # run again: the pass is complete, nothing is checked twice
    assert run_verify(VerifyConfig(db=db, install_path=root, hash=True, shard="1/1",
                                   bar=False)).checked == 0
    assert _merge(db) == 0
    assert _state(db, root) == _state(local_db, local_root)
    assert q(db, "SELECT outcome FROM runs WHERE stage = 'verify' AND shard = '1/1' "
                 "ORDER BY run_id") == [("crashed",), ("ok",)]  # the third checked nothing


def test_a_verdict_on_a_row_changed_since_is_not_applied(tmp_path: Path) -> None:
    db, root = _collection(tmp_path)
    assert _verify(db, root, "--shard", "1/1") == 0
    conn = connect(db)
    with conn:  # after the check: image 1 fetched again, image 2 converted to another file
        conn.execute("UPDATE images SET status = 'pending' WHERE image_id = 1")
        conn.execute("UPDATE images SET status = 'success', sha256 = 'new', file_size = 9 "
                     "WHERE image_id = 1")
        conn.execute("UPDATE images SET sha256 = 'converted' WHERE image_id = 2")
        # a truncated file whose row is claimed (a success awaiting its rename): in flux,
        # checked and left for the next pass, as the local verify does
        conn.execute("UPDATE images SET claimed_by = 'h:1:1' WHERE image_id = 6")
    conn.close()
    copy = (plan.tasks_dir_for(db) / "verify-0001-of-0001.db").read_bytes()
    assert _merge(db) == 0
    rows = q(db, "SELECT image_id, status, sha256, last_checked FROM images "
                 "WHERE image_id IN (1, 2, 3) ORDER BY 1")
    assert rows[0][:3] == (1, "success", "new") and rows[0][3] is None  # not requeued
    assert rows[1][:3] == (2, "success", "converted") and rows[1][3] is None  # not stamped
    assert rows[2][3] is not None  # an unchanged sound one is
    assert q(db, "SELECT status, error_type FROM images WHERE image_id = 5") == [
        ("pending", "file_missing")]
    assert q(db, "SELECT status, last_checked IS NOT NULL FROM images WHERE image_id = 6") == [
        ("success", 1)]
    assert (root / q(db, "SELECT file_path FROM images WHERE image_id = 6")[0][0]).exists()
    before = q(db, "SELECT * FROM images ORDER BY image_id")
    # a merge killed after its commit, before removing the task's database: again, no change
    (plan.tasks_dir_for(db) / "verify-0001-of-0001.db").write_bytes(copy)
    assert _merge(db) == 0
    assert q(db, "SELECT * FROM images ORDER BY image_id") == before


def test_a_main_database_written_since_its_freeze_is_refused(tmp_path: Path, capsys) -> None:
    db, root = _collection(tmp_path)
    conn = connect(db)  # any writer switches it to WAL
    conn.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")
    p = _task(db, root, "--shard", "1/2")
    out, err = p.communicate(timeout=60)
    conn.close()
    assert p.returncode == 3, err
    assert err.count("\n") == 1 and "WAL mode" in err and "--merge-only" in err
    assert not plan.tasks_dir_for(db).exists()


def test_array_refusals_get_one_line(tmp_path: Path, capsys) -> None:
    db, root = _collection(tmp_path)
    assert _verify(db, root, "--shard", "1/2", "--revisit-failed-older-than", "30") == 64
    assert "outside the array" in capsys.readouterr().err
    assert _verify(db, root, "--shard", "1/2", "--limit", "1") == 0
    assert _verify(db, root, "--shard", "1/3") == 64  # unmerged verdicts of another N
    assert "2-task verify array" in capsys.readouterr().err
    # a task still running (a fresh heartbeat on another node) stops the merge
    path = plan.tasks_dir_for(db) / "verify-0001-of-0002.db"
    conn = connect(path, wal=False)
    with conn:
        conn.execute("UPDATE runs SET outcome = 'running', hostname = 'othernode', "
                     "heartbeat_at = ?", (time.time(),))
    conn.close()
    assert _merge(db) == 3
    assert "may still be writing" in capsys.readouterr().err
    # nor does a local verify write the main database the live task reads
    assert _verify(db, root) == 3
    err = capsys.readouterr().err
    assert "verifying here would race" in err and err.count("\n") == 1
    assert _merge(db, "--force") == 0  # applied, and kept for the rest of its verdicts
    assert path.exists()
    assert q(db, "SELECT count(*) FROM images WHERE last_checked IS NOT NULL") == [(1,)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(1, 6).map(float)), min_size=1, max_size=60),
       st.integers(1, 4), st.integers(1, 7), st.floats(1.0, 7.0))
def test_the_task_walk_visits_each_due_row_once(checks: list[float | None], n: int, batch: int,
                                                cutoff: float) -> None:
    """The keyset walk a task resumes from (never-checked by id, then (last_checked, id)),
    with ties in last_checked and any batch size: every due row of its share, once."""
    conn = stdlib_sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE images (image_id INTEGER PRIMARY KEY, gbif_id, file_path, "
                 "file_size, sha256, error_type, last_checked, status)")
    conn.execute(INDEX_CHECKED)
    conn.executemany("INSERT INTO images VALUES (?, 0, NULL, NULL, NULL, NULL, ?, 'success')",
                     list(enumerate(checks, start=1)))
    for k in range(1, n + 1):
        seen, pos = [], None
        while rows := upkeep.to_check(
                conn, cutoff, batch, after=pos[1] if pos and pos[0] is None else -1,
                shard=(k, n), older_after=pos if pos and pos[0] is not None else None):
            seen += [r.image_id for r in rows]
            pos = (rows[-1].last_checked, rows[-1].image_id)
        due = [i for i, c in enumerate(checks, start=1)
               if (c is None or c < cutoff) and i % n == k - 1]
        assert sorted(seen) == due and len(seen) == len(set(seen))
        assert seen == sorted(seen, key=lambda i: (checks[i - 1] is not None,
                                                   checks[i - 1] or 0, i))
