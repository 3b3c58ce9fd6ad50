"""Finalize: roll-up rules, completed_at set once, idempotent in chunks, uses the index."""

from __future__ import annotations

import io
import time

from download_db.db.connection import connect
from download_db.db.gbif_ids import finalize
from download_db.db.sqlite import sqlite3
from download_db.progress import RunContext
from tests.helpers import row, write_multimedia

QUIET = RunContext(out=io.StringIO(), bar=False)


def _db(build, tmp_path):
    rows = []
    for gid in range(1, 8):
        rows += [
            row(gid, f"https://a.example.org/{gid}/1.jpg"),
            row(gid, f"https://a.example.org/{gid}/2.jpg"),
        ]
    code, db = build(write_multimedia(tmp_path / "m.txt", rows))
    assert code == 0
    return db


def _set(conn, gid: int, no: int, status: str, attempts: int = 1) -> None:
    conn.execute(
        "UPDATE images SET status = ?, attempts = ? WHERE gbif_id = ? AND image_no = ?",
        (status, attempts, gid, no),
    )


def test_rollup_rules(build, tmp_path) -> None:
    db = _db(build, tmp_path)
    conn = connect(db)
    _set(conn, 1, 0, "success"), _set(conn, 1, 1, "success")  # done
    _set(conn, 2, 0, "success"), _set(conn, 2, 1, "failed_permanent")  # failed
    _set(conn, 3, 0, "success"), _set(conn, 3, 1, "failed_transient", 2)  # partial: retry left
    _set(conn, 4, 0, "failed_transient", 4), _set(conn, 4, 1, "failed_permanent")  # failed
    _set(conn, 5, 0, "success")  # partial: image 1 pending
    _set(conn, 6, 0, "failed_transient", 1)  # partial
    # 7 untouched: pending
    st = finalize(conn, QUIET, max_attempts=4, chunk_ids=3)
    got = dict(conn.execute("SELECT gbif_id, status || '/' || n_success FROM gbif_ids"))
    assert got == {
        1: "done/2",
        2: "failed/1",
        3: "partial/1",
        4: "failed/0",
        5: "partial/1",
        6: "partial/0",
        7: "pending/0",
    }
    assert st.by_status == {"pending": 1, "partial": 3, "done": 1, "failed": 2}
    stamped = dict(
        conn.execute("SELECT gbif_id, completed_at FROM gbif_ids WHERE completed_at IS NOT NULL")
    )
    assert set(stamped) == {1, 2, 4}

    # idempotent, and completed_at is never overwritten
    time.sleep(0.01)
    st2 = finalize(conn, QUIET, max_attempts=4, chunk_ids=2)
    assert st2.changed == 0
    assert (
        dict(
            conn.execute(
                "SELECT gbif_id, completed_at FROM gbif_ids WHERE completed_at IS NOT NULL"
            )
        )
        == stamped
    )
    # a bigger attempts budget re-opens exhausted transient failures
    finalize(conn, QUIET, max_attempts=5)
    assert conn.execute("SELECT status FROM gbif_ids WHERE gbif_id = 4").fetchone() == ("partial",)
    conn.close()


def test_rollup_query_uses_the_gbif_index(build, tmp_path) -> None:
    from download_db.db import gbif_ids as f

    db = _db(build, tmp_path)
    conn = connect(db)
    plan = " ".join(
        r[-1]
        for r in conn.execute(
            "EXPLAIN QUERY PLAN " + f._ROLLUP, {"now": 0, "max_attempts": 4, "lo": 0, "hi": 10}
        )
    )
    assert "images_gbif_image" in plan, plan
    assert "SCAN images" not in plan.replace("USING INDEX", ""), plan
    conn.close()


def test_finalize_only_cli_on_built_db(build, tmp_path) -> None:
    from download_db.cli.main import init_main

    db = _db(build, tmp_path)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE images SET status='success' WHERE gbif_id=1")
    conn.commit()
    conn.close()
    assert init_main(["--db", str(db), "--finalize-only", "--no-bar"]) == 0
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT status FROM gbif_ids WHERE gbif_id=1").fetchone() == ("done",)
    assert conn.execute("SELECT outcome FROM runs WHERE stage='finalize'").fetchone() == ("ok",)
