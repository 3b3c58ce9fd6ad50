"""Start-up at scale: each start-up and per-claim query costs what it finds, and a stop signal
ends even a single long statement."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from download_db import states
from download_db.cli.main import init_main
from download_db.db import claims, tallies
from download_db.db.connection import connect, transaction
from tests.helpers import generate

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_700_000_000.0
STEPS = 10  # VM instructions per progress-handler call: the unit of cost here


def _db(tmp_path: Path, records: int) -> Path:
    """A built database with retries in every state: due, not yet due, parked."""
    db = tmp_path / f"d{records}.db"
    mm = generate(tmp_path / f"m{records}.txt", records, seed=5, hosts=3)
    assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    conn = connect(db)
    with transaction(conn):
        # a tenth of the images failed transiently once or twice; a few spent 4 attempts
        conn.execute("UPDATE images SET status = 'failed_transient', error_type = 'timeout', "
                     "attempts = image_id % 3 + 1, last_attempt_at = :now, "
                     "next_attempt_at = :now + 600 WHERE image_id % 10 = 0", {"now": NOW})
        conn.execute("UPDATE images SET status = 'failed_transient', error_type = 'timeout', "
                     f"attempts = 4, last_attempt_at = :now, next_attempt_at = {states.EXHAUSTED} "
                     "WHERE image_id % 10 = 5", {"now": NOW})
    conn.close()
    return db


def _cost(db: Path) -> dict[str, int]:
    """VM steps of each start-up query, and of one claim on the biggest host, with the
    attempts budget the rows were written under (4)."""
    conn = connect(db)
    calls = [0]

    def count() -> int:
        calls[0] += 1
        return 0

    def steps(fn) -> int:
        calls[0] = 0
        conn.set_progress_handler(count, STEPS)
        try:
            with transaction(conn):
                fn()
                conn.execute("ROLLBACK")
                conn.execute("BEGIN")  # leaves nothing behind for the next measure
        finally:
            conn.set_progress_handler(None, 0)
        return calls[0] * STEPS

    host = conn.execute("SELECT host_id FROM hosts ORDER BY n_images DESC").fetchone()[0]
    out = {
        "reopen": steps(lambda: claims.reopen_exhausted(conn, 4)),
        "park": steps(lambda: claims.park_exhausted(conn, 4)),
        "work_left": steps(lambda: tallies.work_left(conn)),
        "claim": steps(lambda: claims.claim(conn, "t", host, 8, lease=60, now=NOW)),
    }
    conn.close()
    return out


def test_start_up_costs_do_not_grow_with_the_work_list(tmp_path) -> None:
    small, large = _cost(_db(tmp_path, 60)), _cost(_db(tmp_path, 1200))
    for what in small:
        # twenty times the work list; before, parking and counting walked all of it and a
        # claim looked for expired leases among every due row of the host
        assert large[what] <= 2 * small[what] + 200, (what, small, large)


def test_the_budget_change_is_found_in_the_counters(tmp_path) -> None:
    db = _db(tmp_path, 60)
    conn = connect(db)
    assert tallies.budget_hosts(conn, 4) == ([], [])  # the budget the rows were written under
    reopen, park = tallies.budget_hosts(conn, 6)
    assert reopen and not park
    reopen, park = tallies.budget_hosts(conn, 2)
    assert park and not reopen
    with transaction(conn):
        parked = claims.park_exhausted(conn, 2)
    want = conn.execute("SELECT count(*) FROM images WHERE status = 'failed_transient' "
                        "AND attempts >= 2").fetchone()[0]
    assert parked > 0 and conn.execute(
        f"SELECT count(*) FROM images WHERE {states.PARKED}").fetchone()[0] == want
    assert tallies.budget_hosts(conn, 2) == ([], [])
    assert tallies.work_left(conn) == conn.execute(
        f"SELECT count(*) FROM images WHERE {states.EXHAUSTED_WHERE}").fetchone()[0]
    conn.close()


def test_a_taken_over_claim_is_still_found(tmp_path) -> None:
    db = _db(tmp_path, 60)
    conn = connect(db)
    host = conn.execute("SELECT host_id FROM hosts ORDER BY n_images DESC").fetchone()[0]
    with transaction(conn):
        first = claims.claim(conn, "dead", host, 3, lease=60, now=NOW)
    with transaction(conn):
        again = claims.claim(conn, "alive", host, 50, lease=60, now=NOW + 120)
    taken = {it.image_id for it in again if it.taken_over}
    assert taken == {it.image_id for it in first}
    conn.close()


@pytest.mark.timeout(60)
def test_a_stop_signal_ends_a_statement_that_would_never_end() -> None:
    """A real process inside one endless SQL statement, the way a downloader sat 13 minutes
    in one UPDATE: SIGTERM must end it within moments, through the flag alone."""
    script = textwrap.dedent("""
        import sqlite3
        from download_db.db.connection import interruptible, was_interrupted
        from download_db.signals import stop_on_signals
        with stop_on_signals() as stop:
            conn = sqlite3.connect(":memory:")
            print("ready", flush=True)
            try:
                with interruptible(conn, stop.is_set):
                    conn.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 "
                                 "FROM c) SELECT count(*) FROM c").fetchone()
            except Exception as e:
                print("interrupted" if was_interrupted(e) else repr(e), flush=True)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                         cwd=ROOT)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    time.sleep(0.3)  # well inside the statement
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    assert out.strip() == "interrupted" and p.returncode == 0


def test_an_interrupted_write_rolls_back_and_says_so(tmp_path) -> None:
    """SQLite rolls the transaction back itself when it interrupts a write: the error that
    comes out is the interruption, not a failed ROLLBACK, and nothing was written."""
    from download_db.db.connection import interruptible, was_interrupted
    from download_db.db.sqlite import sqlite3

    conn = connect(tmp_path / "t.db")
    conn.execute("CREATE TABLE t(x INTEGER)")
    conn.execute("INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                 "WHERE x < 100000) SELECT x FROM c")
    with pytest.raises(sqlite3.OperationalError) as err:
        with interruptible(conn, lambda: True), transaction(conn):
            conn.execute("UPDATE t SET x = -x")
    assert was_interrupted(err.value) and not conn.in_transaction
    assert conn.execute("SELECT min(x) FROM t").fetchone()[0] == 1
    conn.close()
