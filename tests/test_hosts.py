"""Per-host politeness: slots across threads and processes, rate, cooldowns, circuit breaker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from email.utils import formatdate
from pathlib import Path

import pytest

from download_db.web.politeness import (
    MAX_RETRY_AFTER,
    HostGate,
    Politeness,
    Slot,
    default_lock_dir,
    parse_retry_after,
)

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
HOST = "herbarium.example.org"
T0 = 1_000_000.0  # explicit clock for everything but the process tests

BREAKER = Politeness(concurrency=3, min_requests=5, failure_rate=0.5, open_seconds=10)


def gate_for(tmp_path: Path, policy: Politeness = Politeness()) -> HostGate:
    return HostGate(tmp_path / "locks", policy)


def is_slot(x) -> bool:
    return isinstance(x, Slot)


# -- concurrency slots --------------------------------------------------------------------


def test_slots_limit_and_release(tmp_path):
    gate = gate_for(tmp_path, Politeness(concurrency=2))
    a, b = gate.acquire(HOST, now=T0), gate.acquire(HOST, now=T0)
    assert is_slot(a) and is_slot(b)
    busy = gate.acquire(HOST, now=T0)
    assert isinstance(busy, float) and T0 < busy <= T0 + 1.0  # come back soon
    a.release()
    a.release()  # idempotent
    c = gate.acquire(HOST, now=T0)
    assert is_slot(c) and not c.probe
    b.release()
    c.release()


def test_slots_are_per_host(tmp_path):
    gate = gate_for(tmp_path, Politeness(concurrency=1))
    a = gate.acquire("a.example.org", now=T0)
    b = gate.acquire("b.example.org", now=T0)
    assert is_slot(a) and is_slot(b)
    assert isinstance(gate.acquire("a.example.org", now=T0), float)
    a.release()
    b.release()


def test_lock_file_names_never_come_from_host_text(tmp_path):
    gate = gate_for(tmp_path, Politeness(concurrency=1))
    evil = "../../etc/passwd\x00 host"
    slot = gate.acquire(evil, now=T0)
    assert is_slot(slot)
    names = sorted(p.name for p in (tmp_path / "locks").iterdir())
    assert names and all(n.startswith("h") and "/" not in n and "passwd" not in n for n in names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locks"]
    slot.release()


def test_concurrency_limit_across_threads(tmp_path):
    n, threads_n = 3, 8
    gate = gate_for(tmp_path, Politeness(concurrency=n))
    barrier = threading.Barrier(threads_n)
    got: list = []
    lock = threading.Lock()

    def worker():
        barrier.wait()
        r = gate.acquire(HOST, now=T0)
        with lock:
            got.append(r)

    ts = [threading.Thread(target=worker) for _ in range(threads_n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    slots = [r for r in got if is_slot(r)]
    waits = [r for r in got if isinstance(r, float)]
    assert len(slots) == n and len(waits) == threads_n - n
    slots[0].release()
    again = gate.acquire(HOST, now=T0)
    assert is_slot(again)
    assert isinstance(gate.acquire(HOST, now=T0), float)
    for s in [again, *slots[1:]]:
        s.release()


CHILD = """
import sys, time
from download_db.web.politeness import HostGate, Politeness
gate = HostGate(sys.argv[1], Politeness(concurrency=1))
slot = gate.acquire(sys.argv[2])
print("held" if not isinstance(slot, float) else "busy", flush=True)
time.sleep(float(sys.argv[3]))
"""


def spawn_holder(lock_dir: Path, seconds: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(lock_dir), HOST, str(seconds)],
                         stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    if line != "held":
        p.kill()
        p.wait()
        pytest.fail(f"child did not get the slot: {line!r}")
    return p


def test_concurrency_limit_across_processes(tmp_path):
    gate = gate_for(tmp_path, Politeness(concurrency=1))
    p = spawn_holder(tmp_path / "locks", 1.0)
    try:
        assert p.poll() is None
        assert isinstance(gate.acquire(HOST), float)  # the child holds the only slot
        assert p.wait(timeout=20) == 0
        slot = gate.acquire(HOST)
        assert is_slot(slot)  # freed when the child exited
        slot.release()
    finally:
        p.kill()
        p.wait()


def test_killed_process_frees_its_slot(tmp_path):
    gate = gate_for(tmp_path, Politeness(concurrency=1))
    p = spawn_holder(tmp_path / "locks", 60)
    try:
        assert isinstance(gate.acquire(HOST), float)
        os.kill(p.pid, signal.SIGKILL)
        assert p.wait(timeout=20) == -signal.SIGKILL
        slot = gate.acquire(HOST)
        assert is_slot(slot)  # the kernel dropped the dead process's flock
        slot.release()
    finally:
        p.kill()
        p.wait()


def test_parent_slot_blocks_child(tmp_path):
    gate = gate_for(tmp_path, Politeness(concurrency=1))
    slot = gate.acquire(HOST)
    assert is_slot(slot)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "locks"), HOST, "0"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=30)
    assert out.stdout.strip() == "busy"
    slot.release()


# -- rate ------------------------------------------------------------------------------------


def test_rate_spacing(tmp_path):
    gate = gate_for(tmp_path, Politeness(concurrency=4, rate=2.0))
    a = gate.acquire(HOST, now=T0)
    assert is_slot(a)
    assert gate.acquire(HOST, now=T0) == T0 + 0.5  # the next token
    assert gate.acquire(HOST, now=T0 + 0.3) == T0 + 0.5
    b = gate.acquire(HOST, now=T0 + 0.5)
    assert is_slot(b)
    assert gate.state(HOST)["next_at"] == T0 + 1.0
    # a refused acquire does not keep a slot: two held, two free
    c, d = gate.acquire(HOST, now=T0 + 1.0), gate.acquire(HOST, now=T0 + 1.5)
    assert is_slot(c) and is_slot(d)
    assert isinstance(gate.acquire(HOST, now=T0 + 5), float)  # now all 4 are busy
    for s in (a, b, c, d):
        s.release()


def test_rate_is_shared_between_gates_on_one_lock_dir(tmp_path):
    g1 = gate_for(tmp_path, Politeness(rate=1.0))
    g2 = gate_for(tmp_path, Politeness(rate=1.0))
    s = g1.acquire(HOST, now=T0)
    assert is_slot(s)
    assert g2.acquire(HOST, now=T0 + 0.2) == T0 + 1.0
    s.release()


def test_pace(tmp_path):
    gate = gate_for(tmp_path, Politeness(rate=1.0))
    slot = gate.acquire(HOST, now=T0)
    assert is_slot(slot)
    assert gate.pace(HOST, now=T0) == T0 + 1.0
    assert gate.pace(HOST, now=T0 + 1.0) is None  # takes the token
    assert gate.pace(HOST, now=T0 + 1.2) == T0 + 2.0
    gate.cool_down(HOST, 30, now=T0 + 2.0)
    assert gate.pace(HOST, now=T0 + 2.0) == T0 + 32.0  # cooldowns still apply
    slot.release()
    unlimited = gate_for(tmp_path / "u")
    assert unlimited.pace(HOST, now=T0) is None
    assert unlimited.pace(HOST, now=T0) is None


# -- cooldown --------------------------------------------------------------------------------


def test_cool_down_is_host_wide_and_capped(tmp_path):
    g1 = gate_for(tmp_path)
    g2 = gate_for(tmp_path)  # another process on this machine
    until = g1.cool_down(HOST, 10**9, now=T0)
    assert until == T0 + MAX_RETRY_AFTER
    assert g2.acquire(HOST, now=T0 + 1) == until
    assert g2.state(HOST)["cooldown_until"] == until
    other = g2.acquire("other.example.org", now=T0 + 1)
    assert is_slot(other)
    other.release()
    # a shorter cooldown never shortens a longer one
    assert g2.cool_down(HOST, 5, now=T0 + 2) == until
    after = g1.acquire(HOST, now=until)
    assert is_slot(after)
    after.release()


def test_cool_down_minimum_one_second(tmp_path):
    gate = gate_for(tmp_path)
    assert gate.cool_down(HOST, 0, now=T0) == T0 + 1.0
    assert gate.cool_down("b", -50, now=T0) == T0 + 1.0


# -- breaker ----------------------------------------------------------------------------------


def open_breaker(gate: HostGate, at: float = T0) -> float:
    """Five host failures; returns the open_until the breaker reports."""
    slot = gate.acquire(HOST, now=at)
    assert is_slot(slot)
    changes = [gate.record(slot, True, now=at + i) for i in range(5)]
    assert changes == [None, None, None, None, "opened"]
    slot.release()
    return gate.state(HOST)["open_until"]


def test_breaker_opens_and_refuses(tmp_path):
    gate = gate_for(tmp_path, BREAKER)
    until = open_breaker(gate)
    assert until == T0 + 4 + 10
    assert gate.state(HOST)["opens"] == 1
    assert gate.acquire(HOST, now=T0 + 5) == until
    # another gate on the same lock dir (another process) sees it too
    assert gate_for(tmp_path, BREAKER).acquire(HOST, now=T0 + 6) == until


def test_breaker_needs_min_requests_and_failure_rate(tmp_path):
    gate = gate_for(tmp_path, BREAKER)
    slot = gate.acquire(HOST, now=T0)
    outcomes = [False, False, False, True, True]  # 2/5 = 0.4 < 0.5
    assert [gate.record(slot, f, now=T0 + i) for i, f in enumerate(outcomes)] == [None] * 5
    assert gate.record(slot, True, now=T0 + 5) == "opened"  # 3/6 = 0.5
    slot.release()


def test_breaker_forgets_outcomes_outside_the_window(tmp_path):
    gate = gate_for(tmp_path, Politeness(min_requests=5, window=10))
    slot = gate.acquire(HOST, now=T0)
    for i in range(4):
        assert gate.record(slot, True, now=T0 + i) is None
    assert gate.record(slot, True, now=T0 + 100) is None  # only 1 in the window
    assert gate.state(HOST)["open_until"] == 0.0
    slot.release()


def test_half_open_single_probe_then_close(tmp_path):
    gate = gate_for(tmp_path, BREAKER)
    until = open_breaker(gate)
    probe = gate.acquire(HOST, now=until + 0.5)
    assert is_slot(probe) and probe.probe
    second = gate.acquire(HOST, now=until + 0.6)
    assert second == until + 0.6 + 5.0  # one probe at a time
    assert gate.record(probe, False, now=until + 1) == "closed"
    probe.release()
    st = gate.state(HOST)
    assert (st["open_until"], st["probe_at"], st["opens"]) == (0.0, 0.0, 0.0)
    normal = gate.acquire(HOST, now=until + 1)
    assert is_slot(normal) and not normal.probe
    normal.release()


def test_probe_failure_reopens_for_longer(tmp_path):
    gate = gate_for(tmp_path, BREAKER)
    until = open_breaker(gate)
    first_period = until - (T0 + 4)
    t = until + 1
    probe = gate.acquire(HOST, now=t)
    assert is_slot(probe) and probe.probe
    assert gate.record(probe, True, now=t) == "opened"
    probe.release()
    st = gate.state(HOST)
    assert st["opens"] == 2
    assert st["open_until"] - t > first_period
    assert gate.acquire(HOST, now=t + 1) == st["open_until"]


def test_probe_failure_doubles_the_open_period(tmp_path):
    gate = gate_for(tmp_path, BREAKER)
    until = open_breaker(gate)
    assert until - (T0 + 4) == 10
    t = until + 1
    probe = gate.acquire(HOST, now=t)
    gate.record(probe, True, now=t)
    probe.release()
    assert gate.state(HOST)["open_until"] == t + 20


def test_open_period_capped(tmp_path):
    policy = Politeness(concurrency=3, min_requests=5, open_seconds=10, max_open_seconds=100,
                        quarantine_after=100)
    gate = gate_for(tmp_path, policy)
    until = open_breaker(gate)
    periods = []
    for _ in range(5):
        t = until + 1
        probe = gate.acquire(HOST, now=t)
        assert is_slot(probe) and probe.probe
        assert gate.record(probe, True, now=t) == "opened"
        probe.release()
        until = gate.state(HOST)["open_until"]
        periods.append(until - t)
    assert periods[:4] == [20, 40, 80, 100] and periods[4] == 100  # doubles, then capped


def test_quarantine_after_consecutive_opens(tmp_path):
    policy = Politeness(concurrency=3, min_requests=5, open_seconds=10, quarantine_after=3)
    gate = gate_for(tmp_path, policy)
    until = open_breaker(gate)  # opens = 1
    changes = []
    for _ in range(2):
        t = until + 1
        probe = gate.acquire(HOST, now=t)
        changes.append(gate.record(probe, True, now=t))
        probe.release()
        until = gate.state(HOST)["open_until"]
    assert changes == ["opened", "quarantine"]
    assert gate.state(HOST)["opens"] == 3
    # quarantine still lets a later probe through; its success closes the breaker
    probe = gate.acquire(HOST, now=until + 1)
    assert is_slot(probe) and probe.probe
    assert gate.record(probe, False, now=until + 1) == "closed"
    assert gate.state(HOST)["opens"] == 0
    probe.release()


def test_not_found_outcomes_never_open_the_breaker(tmp_path):
    gate = gate_for(tmp_path, BREAKER)
    slot = gate.acquire(HOST, now=T0)
    for i in range(50):
        assert gate.record(slot, False, now=T0 + i) is None  # e.g. 404: the image's fault
        assert gate.record(slot, None, now=T0 + i) is None  # e.g. 429: says nothing
    assert gate.state(HOST)["open_until"] == 0.0
    # outcomes that say nothing do not count towards min_requests either
    for i in range(4):
        assert gate.record(slot, None, now=T0 + 60 + i) is None
    slot.release()


def test_silent_probe_outcome_frees_the_probe(tmp_path):
    gate = gate_for(tmp_path, BREAKER)
    until = open_breaker(gate)
    probe = gate.acquire(HOST, now=until + 1)
    assert probe.probe
    assert gate.record(probe, None, now=until + 1) is None  # e.g. 429
    probe.release()
    again = gate.acquire(HOST, now=until + 1.1)
    assert is_slot(again) and again.probe  # another probe at once, not in 5 s
    again.release()


def test_lost_probe_is_replaced_after_two_minutes(tmp_path):
    gate = gate_for(tmp_path, BREAKER)
    until = open_breaker(gate)
    probe = gate.acquire(HOST, now=until + 1)
    assert probe.probe
    probe.release()  # never recorded (the worker died)
    assert isinstance(gate.acquire(HOST, now=until + 60), float)
    late = gate.acquire(HOST, now=until + 122)
    assert is_slot(late) and late.probe
    late.release()


def test_late_outcome_of_a_normal_slot_while_open_changes_nothing(tmp_path):
    gate = gate_for(tmp_path, BREAKER)
    old = gate.acquire(HOST, now=T0)
    until = open_breaker(gate, at=T0 + 1)
    before = gate.state(HOST)
    assert gate.record(old, False, now=T0 + 7) is None
    assert gate.record(old, True, now=T0 + 8) is None
    assert gate.state(HOST) == before
    assert gate.acquire(HOST, now=T0 + 9) == until
    old.release()


# -- Retry-After --------------------------------------------------------------------------------

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("99999999", MAX_RETRY_AFTER),
        (formatdate(NOW + 90, usegmt=True), 90.0),
        (formatdate(NOW - 3600, usegmt=True), 0.0),  # in the past: go now
        (formatdate(NOW + 86400 * 30, usegmt=True), MAX_RETRY_AFTER),
        ("Tue, 14 Nov 2023 22:13:50 +0000", 30.0),
        ("", None),
        (None, None),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("Mon, 99 Foo 2023 99:99:99 GMT", None),
    ],
)
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_unicode_digit_is_garbage():
    assert parse_retry_after("\u00b2", now=NOW) is None


# -- lock directory -------------------------------------------------------------------------------


def test_default_lock_dir_is_stable_per_database(tmp_path, monkeypatch):
    db = tmp_path / "download_status.db"
    a = default_lock_dir(db)
    assert a == default_lock_dir(str(db))
    monkeypatch.chdir(tmp_path)
    assert default_lock_dir("download_status.db") == a  # relative path resolves the same
    assert default_lock_dir(tmp_path / "other.db") != a
    assert a.name.startswith("gbif-download-db-")
    assert len(a.name) == len("gbif-download-db-") + 16
    assert a.parent in (Path("/dev/shm"), Path(os.environ.get("TMPDIR", "/tmp")))


def test_gate_creates_its_lock_dir(tmp_path):
    d = tmp_path / "a" / "b"
    gate = HostGate(d, Politeness())
    assert d.is_dir()
    s = gate.acquire(HOST, now=T0)
    assert is_slot(s)
    s.release()
    gate.close()
    assert gate.state(HOST)["next_at"] == 0.0  # reopens its state file after close()
