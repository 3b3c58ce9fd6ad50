"""The work queue on a real database: claims and leases, results, release, budgets, dead runs."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from download_db import states
from download_db.cli.main import init_main
from download_db.db import claims, runs
from download_db.db.claims import Result
from download_db.db.connection import connect, transaction
from download_db.states import EXHAUSTED, FAILED_PERMANENT, FAILED_TRANSIENT, PENDING, SUCCESS
from tests.helpers import row, write_multimedia

NOW = 1_700_000_000.0
LEASE = 60.0
A_IDS = [1001, 1002, 1003, 1004, 1005]
B_IDS = [2001, 2002, 2003]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("claims_db")
    rows = [row(g, f"https://a.example.org/img/{g}.jpg") for g in A_IDS]
    rows += [row(g, f"https://b.example.org/{g}.jpg") for g in B_IDS]
    mm = write_multimedia(d / "multimedia.txt", rows)
    db = d / "template.db"
    assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    return db


@pytest.fixture
def conn(template, tmp_path):
    db = tmp_path / "download_status.db"
    shutil.copy(template, db)
    for suffix in ("-wal", "-shm"):
        if Path(str(template) + suffix).exists():
            shutil.copy(str(template) + suffix, str(db) + suffix)
    c = connect(db)
    yield c
    c.close()


def host_id(conn, host: str) -> int:
    return conn.execute("SELECT host_id FROM hosts WHERE host = ?", (host,)).fetchone()[0]


def get(conn, image_id: int) -> dict:
    cur = conn.execute("SELECT * FROM images WHERE image_id = ?", (image_id,))
    names = [d[0] for d in cur.description]
    return dict(zip(names, cur.fetchone(), strict=True))


def claim(conn, token: str, host: int, n: int = 10, now: float = NOW) -> list[claims.Item]:
    with transaction(conn):
        return claims.claim(conn, token, host, n, lease=LEASE, now=now)


def record(conn, results, token: str, max_attempts: int = 3, now: float = NOW + 1):
    with transaction(conn):
        return claims.record(conn, results, token, max_attempts, now=now)


def fail_once(conn, token: str = "t1", now: float = NOW) -> claims.Item:
    """Claim the first image of host a and record a transient failure."""
    item = claim(conn, token, host_id(conn, "a.example.org"), 1, now=now)[0]
    kept = record(conn, [Result(item, FAILED_TRANSIENT, http_status=503,
                                error_type="server_error", error_detail="HTTP 503")],
                  token, now=now + 1)
    assert len(kept) == 1
    return item


# -- claiming ------------------------------------------------------------------------------


def test_claim_returns_due_items_of_one_host_and_leases_them(conn):
    a, b = host_id(conn, "a.example.org"), host_id(conn, "b.example.org")
    items = claim(conn, "host1:1:1", a, 3)
    assert sorted(it.gbif_id for it in items) == A_IDS[:3]  # oldest due: input order
    for it in items:
        assert it.host_id == a and it.status == PENDING and it.attempts == 0
        assert it.urls == [f"https://a.example.org/img/{it.gbif_id}.jpg"]
        r = get(conn, it.image_id)
        assert r["claimed_by"] == "host1:1:1"
        assert r["next_attempt_at"] == NOW + LEASE
        assert r["host_id"] == a
    assert {get(conn, i)["claimed_by"] for i in range(1, 9)} - {"host1:1:1"} == {None}
    assert all(it.host_id == b for it in claim(conn, "other", b))


def test_second_claimer_gets_none_of_the_claimed_items(conn):
    a = host_id(conn, "a.example.org")
    first = claim(conn, "tokA", a, 3)
    second = claim(conn, "tokB", a, 10)
    assert {it.image_id for it in first}.isdisjoint(it.image_id for it in second)
    assert sorted(it.gbif_id for it in second) == A_IDS[3:]
    assert claim(conn, "tokC", a, 10) == []
    assert claim(conn, "tokC", a, 10, now=NOW + LEASE - 1) == []  # leases still hold


def test_expired_lease_can_be_claimed_by_another_token(conn):
    a = host_id(conn, "a.example.org")
    first = claim(conn, "dead-run", a, 5)
    later = NOW + LEASE + 1
    again = claim(conn, "new-run", a, 10, now=later)
    assert sorted(it.image_id for it in again) == sorted(it.image_id for it in first)
    assert all(get(conn, it.image_id)["claimed_by"] == "new-run" for it in again)
    # the dead run's late result no longer applies
    late = Result(first[0], SUCCESS, file_path="x.jpg")
    assert record(conn, [late], "dead-run", now=later + 1) == []
    assert get(conn, first[0].image_id)["status"] == PENDING


def test_claim_skips_not_yet_due_done_and_exhausted(conn):
    a = host_id(conn, "a.example.org")
    ids = [r[0] for r in conn.execute("SELECT image_id FROM images WHERE host_id = ? "
                                      "ORDER BY image_id", (a,))]
    with transaction(conn):
        conn.execute("UPDATE images SET next_attempt_at = ? WHERE image_id = ?", (NOW + 30, ids[0]))
        conn.execute("UPDATE images SET status = 'success' WHERE image_id = ?", (ids[1],))
        conn.execute("UPDATE images SET status = 'failed_permanent' WHERE image_id = ?", (ids[2],))
        conn.execute("UPDATE images SET status = 'failed_transient', attempts = 3, "
                     f"next_attempt_at = {EXHAUSTED} WHERE image_id = ?", (ids[3],))
    got = claim(conn, "t", a, 10)
    assert [it.image_id for it in got] == [ids[4]]
    # due now; the other image is still under its lease (NOW + 60)
    assert [it.image_id for it in claim(conn, "t2", a, 10, now=NOW + 30)] == [ids[0]]


def test_claim_oldest_due_first(conn):
    a = host_id(conn, "a.example.org")
    with transaction(conn):
        for image_id, at in ((1, 50.0), (2, 40.0), (3, 30.0), (4, 20.0), (5, 10.0)):
            conn.execute("UPDATE images SET next_attempt_at = ? WHERE image_id = ?",
                         (at, image_id))
    # the two oldest due (RETURNING order itself is not specified)
    assert sorted(it.image_id for it in claim(conn, "t", a, 2)) == [4, 5]


def test_next_due(conn):
    a, b = host_id(conn, "a.example.org"), host_id(conn, "b.example.org")
    assert claims.next_due(conn, a) == 0.0
    claim(conn, "t", a, 10)
    # claimed rows are work in progress (their next_attempt_at is the lease end): not due
    assert claims.next_due(conn, a) is None
    with transaction(conn):
        conn.execute(f"UPDATE images SET status = 'failed_transient', next_attempt_at = {EXHAUSTED}"
                     " WHERE host_id = ?", (b,))
    assert claims.next_due(conn, b) is None  # parked rows are not due, ever
    assert claims.next_due(conn, 9999) is None


def test_claim_uses_the_todo_index_and_never_scans_images(conn):
    params = {"token": "t", "lease_until": 1.0, "host_id": 1, "now": 0.0, "n": 5}
    for sql, args in ((claims._CLAIM, params), (claims._NEXT_DUE, (1,))):
        plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]
        assert any("images_todo" in step for step in plan), plan
        assert not any(step.startswith("SCAN images") for step in plan), plan
        assert not any("SCAN" in step and "images" in step for step in plan), plan


# -- recording ---------------------------------------------------------------------------------


def test_record_transient_failure_backs_off(conn):
    item = fail_once(conn, now=NOW)
    r = get(conn, item.image_id)
    assert r["status"] == FAILED_TRANSIENT
    assert r["attempts"] == 1
    assert NOW + 1 + 60 <= r["next_attempt_at"] <= NOW + 1 + 180
    assert (r["http_status"], r["error_type"], r["error_detail"]) == (503, "server_error",
                                                                      "HTTP 503")
    assert r["last_attempt_at"] == NOW + 1
    assert r["claimed_by"] is None


def test_record_last_allowed_attempt_is_exhausted(conn):
    a = host_id(conn, "a.example.org")
    with transaction(conn):
        conn.execute("UPDATE images SET status = 'failed_transient', attempts = 2 "
                     "WHERE image_id = 1")
    item = [it for it in claim(conn, "t", a) if it.image_id == 1][0]
    assert item.attempts == 2
    record(conn, [Result(item, FAILED_TRANSIENT, error_type="timeout")], "t", max_attempts=3)
    r = get(conn, 1)
    assert (r["status"], r["attempts"], r["next_attempt_at"]) == (FAILED_TRANSIENT, 3, EXHAUSTED)
    assert claims.next_due(conn, a) is None  # the others are claimed; this one is parked
    assert 1 not in [it.image_id for it in claim(conn, "t2", a, now=NOW + 10**6)]


def test_record_success_keeps_claim_until_settled(conn):
    a = host_id(conn, "a.example.org")
    item = claim(conn, "tok", a, 1)[0]
    res = Result(item, SUCCESS, http_status=200, file_path="100/000/1001-00.jpg",
                 file_size=1234, sha256="ab" * 32, width=683, height=1024)
    assert record(conn, [res], "tok") == [res]
    r = get(conn, item.image_id)
    assert (r["status"], r["attempts"], r["next_attempt_at"]) == (SUCCESS, 1, 0.0)
    assert (r["file_path"], r["file_size"], r["width"], r["height"]) == (
        "100/000/1001-00.jpg", 1234, 683, 1024)
    assert r["claimed_by"] == "tok"  # held until the file is renamed
    with transaction(conn):
        claims.settle(conn, [item.image_id], "other")
    assert get(conn, item.image_id)["claimed_by"] == "tok"
    with transaction(conn):
        claims.settle(conn, [item.image_id], "tok")
    assert get(conn, item.image_id)["claimed_by"] is None


def test_record_permanent_failure_and_detail_cap(conn):
    item = claim(conn, "tok", host_id(conn, "a.example.org"), 1)[0]
    record(conn, [Result(item, FAILED_PERMANENT, http_status=404, error_type="http_404",
                         error_detail="x" * 5000)], "tok")
    r = get(conn, item.image_id)
    assert (r["status"], r["attempts"], r["next_attempt_at"], r["claimed_by"]) == (
        FAILED_PERMANENT, 1, 0.0, None)
    assert len(r["error_detail"]) == 2000
    # not work any more
    assert item.image_id not in [it.image_id for it in
                                 claim(conn, "t2", item.host_id, now=NOW + 10**6)]


def test_record_with_wrong_token_changes_nothing(conn):
    item = claim(conn, "mine", host_id(conn, "a.example.org"), 1)[0]
    before = get(conn, item.image_id)
    kept = record(conn, [Result(item, SUCCESS, file_path="p.jpg"),
                         Result(item, FAILED_PERMANENT, error_type="http_404")], "not-mine")
    assert kept == []
    assert get(conn, item.image_id) == before


def test_deferred_result_keeps_attempts_and_error_details(conn):
    item = fail_once(conn, "t1", now=NOW)
    before = get(conn, item.image_id)
    later = before["next_attempt_at"] + 1
    again = [it for it in claim(conn, "t2", item.host_id, now=later)
             if it.image_id == item.image_id][0]
    assert (again.status, again.attempts, again.error_type) == (FAILED_TRANSIENT, 1,
                                                                "server_error")
    kept = record(conn, [Result(again, PENDING, attempted=False, retry_at=later + 500)], "t2",
                  now=later + 1)
    assert len(kept) == 1
    r = get(conn, item.image_id)
    assert r["attempts"] == 1  # nothing was asked of any server
    assert (r["http_status"], r["error_type"], r["error_detail"]) == (503, "server_error",
                                                                      "HTTP 503")
    assert r["last_attempt_at"] == before["last_attempt_at"]
    assert r["next_attempt_at"] == later + 500
    assert r["claimed_by"] is None


def test_deferred_result_keeps_failed_transient_status(conn):
    item = fail_once(conn, "t1", now=NOW)
    later = get(conn, item.image_id)["next_attempt_at"] + 1
    again = [it for it in claim(conn, "t2", item.host_id, now=later)
             if it.image_id == item.image_id][0]
    record(conn, [Result(again, PENDING, attempted=False, retry_at=later + 500)], "t2",
           now=later + 1)
    assert get(conn, item.image_id)["status"] == FAILED_TRANSIENT


def test_deferred_pending_item_stays_pending_and_due_now_without_retry_at(conn):
    item = claim(conn, "t", host_id(conn, "a.example.org"), 1)[0]
    record(conn, [Result(item, PENDING, attempted=False)], "t", now=NOW + 5)
    r = get(conn, item.image_id)
    assert (r["status"], r["attempts"], r["next_attempt_at"], r["last_attempt_at"]) == (
        PENDING, 0, NOW + 5, None)


# -- release and budgets --------------------------------------------------------------------------


def test_release_makes_items_due_again(conn):
    a = host_id(conn, "a.example.org")
    items = claim(conn, "tok", a, 5)
    with transaction(conn):
        claims.release(conn, [(it, NOW) for it in items[:2]], "wrong-token", now=NOW + 1)
    assert all(get(conn, it.image_id)["claimed_by"] == "tok" for it in items)
    with transaction(conn):
        claims.release(conn, [(it, NOW) for it in items[:2]], "tok", now=NOW + 1)
    for it in items[:2]:
        r = get(conn, it.image_id)
        assert (r["claimed_by"], r["next_attempt_at"]) == (None, NOW + 1)
    got = claim(conn, "other", a, 10, now=NOW + 1)
    assert sorted(it.image_id for it in got) == sorted(it.image_id for it in items[:2])


def test_release_does_not_touch_successes(conn):
    item = claim(conn, "tok", host_id(conn, "a.example.org"), 1)[0]
    record(conn, [Result(item, SUCCESS, file_path="f.jpg")], "tok")
    with transaction(conn):
        claims.release(conn, [(item, NOW)], "tok", now=NOW + 9)
    r = get(conn, item.image_id)
    assert (r["status"], r["claimed_by"], r["next_attempt_at"]) == (SUCCESS, "tok", 0.0)


def _exhaust(conn) -> claims.Item:
    with transaction(conn):
        conn.execute("UPDATE images SET status = 'failed_transient', attempts = 2 "
                     "WHERE image_id = 1")
    item = [it for it in claim(conn, "t", host_id(conn, "a.example.org"))
            if it.image_id == 1][0]
    record(conn, [Result(item, FAILED_TRANSIENT, error_type="timeout")], "t", 3, now=NOW + 7)
    assert get(conn, 1)["next_attempt_at"] == EXHAUSTED
    return item


def test_reopen_exhausted_with_a_bigger_budget(conn):
    _exhaust(conn)
    with transaction(conn):
        assert claims.reopen_exhausted(conn, 3) == 0  # same budget: stays parked
    with transaction(conn):
        assert claims.reopen_exhausted(conn, 5) == 1
    r = get(conn, 1)
    assert r["next_attempt_at"] == r["last_attempt_at"] == NOW + 7
    got = claim(conn, "t9", host_id(conn, "a.example.org"), 10, now=NOW + 10**6)
    assert 1 in [it.image_id for it in got]


def test_park_exhausted_with_a_smaller_budget(conn):
    item = fail_once(conn, now=NOW)  # attempts 1, due later
    with transaction(conn):
        conn.execute("UPDATE images SET attempts = 3 WHERE image_id = 2")  # pending: not parked
    with transaction(conn):
        assert claims.park_exhausted(conn, 2) == 0
    with transaction(conn):
        assert claims.park_exhausted(conn, 1) == 1
    assert get(conn, item.image_id)["next_attempt_at"] == EXHAUSTED
    assert get(conn, 2)["next_attempt_at"] == 0.0
    with transaction(conn):
        assert claims.park_exhausted(conn, 1) == 0  # already parked
        assert claims.reopen_exhausted(conn, 2) == 1  # and back


# -- dead runs ------------------------------------------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _run(conn, host: str, pid: int, hb: float | None, stage: str = "download",
         outcome: str = "running") -> str:
    with transaction(conn):
        cur = conn.execute("INSERT INTO runs(stage, started_at, heartbeat_at, hostname, pid, "
                           "outcome) VALUES (?, ?, ?, ?, ?, ?)",
                           (stage, NOW - 100, hb, host, pid, outcome))
    return f"{host}:{pid}:{cur.lastrowid}"


def test_live_tokens(conn):
    me = socket.gethostname()
    run_id = runs.start_run(conn, "download", argv=[])
    mine = claims.make_token(run_id)
    assert mine == f"{me}:{os.getpid()}:{run_id}"
    now = conn.execute("SELECT heartbeat_at FROM runs WHERE run_id = ?", (run_id,)).fetchone()[0]
    dead_here = _run(conn, me, _dead_pid(), now)
    elsewhere = _run(conn, "node-b.cluster", 4242, now)  # cannot check: trusted while fresh
    stale = _run(conn, "node-c.cluster", 4243, now - 1000)
    finished = _run(conn, me, os.getpid(), now, outcome="ok")
    other_stage = _run(conn, me, os.getpid(), now, stage="init")
    no_heartbeat = _run(conn, "node-d.cluster", 1, None)
    live = claims.live_tokens(conn, stale_after=300, now=now + 1)
    assert live == {mine, elsewhere}
    for t in (dead_here, stale, finished, other_stage, no_heartbeat):
        assert t not in live
    assert claims.live_tokens(conn, stale_after=300, now=now + 10_000) == set()


def test_dead_claims(conn):
    me = socket.gethostname()
    a, b = host_id(conn, "a.example.org"), host_id(conn, "b.example.org")
    live_run = runs.start_run(conn, "download", argv=[])
    live = claims.make_token(live_run)
    dead = _run(conn, me, _dead_pid(), NOW)
    mine = claim(conn, live, a, 2)
    theirs = claim(conn, dead, b, 10)
    done = claim(conn, dead, a, 1)[0]
    record(conn, [Result(done, SUCCESS, file_path="p/q.jpg", sha256="cd" * 32)], dead)
    tokens = claims.live_tokens(conn, stale_after=3600)
    assert live in tokens and dead not in tokens
    found = claims.dead_claims(conn, tokens)
    assert sorted(r[0] for r in found) == sorted([it.image_id for it in theirs] + [done.image_id])
    assert not {it.image_id for it in mine} & {r[0] for r in found}
    by_id = {r[0]: r for r in found}
    assert by_id[done.image_id] == (done.image_id, done.gbif_id, done.image_no, SUCCESS,
                                    "p/q.jpg", "cd" * 32, dead)
    assert all(r[6] == dead for r in found)
    assert claims.dead_claims(conn, tokens | {dead}) == []


# -- backoff -------------------------------------------------------------------------------------


class _Fixed:
    def __init__(self, v: float) -> None:
        self.v = v

    def uniform(self, a: float, b: float) -> float:
        assert (a, b) == (0.5, 1.5)
        return self.v


def test_backoff_grows_and_is_capped():
    one = _Fixed(1.0)
    seq = [states.backoff(n, one) for n in range(0, 12)]
    assert seq[:4] == [120.0, 120.0, 240.0, 480.0]
    assert all(x <= y for x, y in zip(seq, seq[1:], strict=False))
    assert seq[-1] == states.BACKOFF_CAP == 6 * 3600
    assert states.backoff(1000, one) == states.BACKOFF_CAP  # no overflow
    assert states.backoff(1000, _Fixed(1.5)) == 1.5 * states.BACKOFF_CAP


def test_backoff_jitter_range():
    rnd = random.Random(5)
    for n, base in ((1, 120.0), (2, 240.0), (4, 960.0)):
        vals = [states.backoff(n, rnd) for _ in range(200)]
        assert all(0.5 * base <= v <= 1.5 * base for v in vals)
        assert max(vals) - min(vals) > 0.5 * base  # really jittered
