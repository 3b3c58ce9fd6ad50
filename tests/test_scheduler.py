"""download/scheduler.py on its own: fake claims, a real HostGate, the test plays the workers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from download_db.db.claims import Item
from download_db.download.scheduler import HOLD_LIMIT, HostQueue, Scheduler, rank
from download_db.web.politeness import HostGate, Politeness, Slot

A, B = (1, "a.example.org"), (2, "b.example.org")


def items(host_id: int, n: int, start: int = 0) -> list[Item]:
    return [Item(image_id=host_id * 1000 + i, gbif_id=host_id * 1000 + i, image_no=0,
                 status="pending", attempts=0, error_type=None,
                 urls=[f"http://h{host_id}/{i}.jpg"], host_id=host_id)
            for i in range(start, start + n)]


class FakeClaims:
    """The writer's claim side: hands out each host's work in order, records every call."""

    def __init__(self, work: dict[int, list[Item]], due: dict[int, float] | None = None) -> None:
        self.work = {h: list(v) for h, v in work.items()}
        self.due = due or {}
        self.claims: list[tuple[int, int]] = []
        self.released: list[tuple[Item, float]] = []

    def claim(self, host_id: int, n: int) -> list[Item]:
        self.claims.append((host_id, n))
        got, self.work[host_id] = self.work[host_id][:n], self.work[host_id][n:]
        return got

    def next_due(self, host_id: int) -> float | None:
        return self.due.get(host_id)

    def release(self, given_back: list[tuple[Item, float]]) -> None:
        self.released.extend(given_back)


@pytest.fixture
def gate(tmp_path: Path):
    g = HostGate(tmp_path / "locks", Politeness(concurrency=1))
    yield g
    g.close()


def scheduler(claims: FakeClaims, gate: HostGate, hosts=(A, B), *, quarantined=(),
              per_host: int = 1, **kw) -> Scheduler:
    return Scheduler(claims, gate, [(hid, name, hid in quarantined) for hid, name in hosts],
                     per_host=per_host, stop=threading.Event(), wait_for_retries=0, **kw)


def next_within(s: Scheduler, seconds: float = 5.0) -> tuple[Item, Slot] | None:
    """s.next() on a thread; a scheduler that blocks for good fails the test, not hangs it."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(s.next()), daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        s.stop.set()
        t.join(1)
        pytest.fail(f"next() still blocked after {seconds}s")
    return out[0]


def finish(s: Scheduler, got: tuple[Item, Slot], retry_at: float | None = None) -> None:
    """What a worker does with an item it has processed."""
    item, slot = got
    slot.release()
    s.slot_released(slot.host)
    s.done(item, retry_at)


def test_each_host_has_its_own_queue_filled_by_claims_of_a_batch(gate) -> None:
    claims = FakeClaims({1: items(1, 3), 2: []})
    s = scheduler(claims, gate, per_host=2)
    got = next_within(s)
    assert got is not None
    item, slot = got
    assert (item, slot.host) == (items(1, 1)[0], A[1])
    assert claims.claims == [(1, s.batch)] and s.batch == 16  # a few seconds of work a host
    assert [it.image_id for it in s.queues[0].items] == [1001, 1002]
    finish(s, got)


def test_a_host_at_its_limit_is_skipped_while_another_host_has_work(gate) -> None:
    claims = FakeClaims({1: items(1, 3), 2: items(2, 3)})
    s = scheduler(claims, gate)
    first = next_within(s)
    second = next_within(s)
    assert first is not None and second is not None
    assert {first[1].host, second[1].host} == {A[1], B[1]}  # not two of the same host
    # both hosts at their limit: the next caller waits, and gets the first slot given back
    waiter: list = []
    t = threading.Thread(target=lambda: waiter.append(s.next()), daemon=True)
    t.start()
    time.sleep(0.1)
    assert t.is_alive() and not waiter
    finish(s, first)
    t.join(5)
    assert waiter and waiter[0] is not None and waiter[0][1].host == first[1].host
    finish(s, second)
    finish(s, waiter[0])


def test_slots_held_by_another_process_send_work_to_the_other_host(gate, tmp_path) -> None:
    other = HostGate(tmp_path / "locks", Politeness(concurrency=1))  # the same lock files
    held = other.acquire(A[1])
    assert isinstance(held, Slot)
    claims = FakeClaims({1: items(1, 2), 2: items(2, 2)})
    s = scheduler(claims, gate)
    try:
        for _ in range(2):
            got = next_within(s)
            assert got is not None and got[1].host == B[1]
            finish(s, got)
        assert s.queues[0].items  # A's work waits, claimed, for a slot
    finally:
        held.release()
        other.close()
    hosts = []
    while (got := next_within(s)) is not None:
        hosts.append(got[1].host)
        finish(s, got)
    assert hosts == [A[1], A[1]]


def test_a_cooled_down_host_is_deferred_and_gives_its_claims_back(gate) -> None:
    until = gate.cool_down(A[1], 60)
    claims = FakeClaims({1: items(1, 3), 2: items(2, 1)})
    s = scheduler(claims, gate)
    got = next_within(s)
    assert got is not None and got[1].host == B[1]
    # a host closed longer than HOLD_LIMIT holds no claims: they go back with its reopening
    assert until - time.time() > HOLD_LIMIT
    assert [(it.image_id, at) for it, at in claims.released] == [
        (it.image_id, until) for it in items(1, 3)]
    assert s.queues[0].not_before == until and not s.queues[0].items
    finish(s, got)
    assert next_within(s) is None  # B is done; A is not asked again before `until`
    assert claims.claims.count((1, s.batch)) == 1


def test_a_queue_is_refilled_when_it_runs_out(gate) -> None:
    claims = FakeClaims({1: items(1, 20)})
    s = scheduler(claims, gate, hosts=(A,))
    handed = []
    while (got := next_within(s)) is not None:
        handed.append(got[0].image_id)
        finish(s, got)
    assert handed == [it.image_id for it in items(1, 20)]  # each once, in claim order
    assert claims.claims == [(1, 8), (1, 8), (1, 8), (1, 8)]  # the last one finds nothing


def test_quarantined_hosts_only_when_no_other_host_is_ready(gate) -> None:
    claims = FakeClaims({1: items(1, 2), 2: items(2, 2)})
    s = scheduler(claims, gate, quarantined=(1,), per_host=2)
    order = []
    while (got := next_within(s)) is not None:
        order.append(got[1].host)
        finish(s, got)
    assert order == [B[1], B[1], A[1], A[1]]


def test_max_items_bounds_what_is_claimed_and_handed_out(gate) -> None:
    claims = FakeClaims({1: items(1, 20)})
    s = scheduler(claims, gate, hosts=(A,), max_items=3)
    handed = []
    while (got := next_within(s)) is not None:
        handed.append(got[0].image_id)
        finish(s, got)
    assert handed == [1000, 1001, 1002]
    assert claims.claims == [(1, 3)]  # never holds more than it may still hand out


def test_stop_ends_waiting_workers_and_leaves_the_claimed_items_to_release(gate) -> None:
    claims = FakeClaims({1: items(1, 5)})
    s = scheduler(claims, gate, hosts=(A,))
    first = next_within(s)
    assert first is not None
    waiter: list = []
    t = threading.Thread(target=lambda: waiter.append(s.next()), daemon=True)
    t.start()  # the host's only slot is taken: it waits
    time.sleep(0.1)
    s.stop.set()
    t.join(2)
    assert waiter == [None]
    assert next_within(s) is None
    left = s.remaining()
    assert [it.image_id for it, _ in left] == [1001, 1002, 1003, 1004]
    assert s.remaining() == []  # handed back once
    finish(s, first)


def queue(host: str, images: int, cost: float = 0.0, *, queued: int = 0,
          drained: bool = False) -> HostQueue:
    q = HostQueue(0, host, images=images, cost=cost, drained=drained)
    q.items.extend(items(1, queued))
    return q


def test_rank_puts_the_host_that_would_end_last_first() -> None:
    big_fast = queue("big", 500, cost=0.05)  # 500 x 0.05 / 30 = 0.8 s at its limit
    fragile = queue("fragile", 250, cost=0.15)  # 250 x 0.15 / 2 = 18.8 s
    slow = queue("slow", 150, cost=0.25)  # 150 x 0.25 / 4 = 9.4 s
    limits = {"big": 30, "fragile": 2, "slow": 4}
    order = rank([big_fast, fragile, slow], limits.__getitem__)
    assert [q.host for q in order] == ["fragile", "slow", "big"]


def test_rank_counts_unmeasured_hosts_at_the_median_cost_and_drained_ones_by_their_queue() -> None:
    measured = queue("m", 100, cost=0.2)  # 100 x 0.2 = 20
    new = queue("new", 150)  # at the median (0.2): 30
    drained = queue("drained", 10_000, cost=0.2, queued=3, drained=True)  # 3 left: 0.6
    order = rank([measured, new, drained], lambda host: 1)
    assert [q.host for q in order] == ["new", "m", "drained"]
    assert new.left() == 150 and drained.left() == 3


@given(st.lists(st.tuples(st.integers(1, 10_000), st.floats(0.0, 5.0), st.integers(1, 64)),
                min_size=1, max_size=30))
def test_rank_orders_by_time_to_finish_and_keeps_every_host(hosts) -> None:
    qs = [queue(f"h{k}", n, cost) for k, (n, cost, _lim) in enumerate(hosts)]
    limit = {f"h{k}": lim for k, (_n, _c, lim) in enumerate(hosts)}
    order = rank(qs, limit.__getitem__)
    assert sorted(q.host for q in order) == sorted(q.host for q in qs)
    known = [q.cost for q in qs if q.cost > 0]
    default = sorted(known)[len(known) // 2] if known else 1.0
    finish_at = [q.left() * (q.cost or default) / limit[q.host] for q in order]
    if len(known) % 2 == 1 or not known:  # the median is one of the costs: exact order
        assert finish_at == sorted(finish_at, reverse=True)


def test_scarce_threads_go_to_the_host_that_would_end_last(tmp_path: Path) -> None:
    """Four threads, every host may take four: round robin would give the big host one
    thread in five; ranked, it gets all four while the small hosts wait their turn."""
    gate = HostGate(tmp_path / "locks", Politeness(concurrency=4))
    hosts = [(1, "big.example.org", False, 400)] + [
        (k, f"small{k}.example.org", False, 2) for k in range(2, 6)]
    claims = FakeClaims({1: items(1, 400), **{k: items(k, 2) for k in range(2, 6)}})
    s = Scheduler(claims, gate, hosts, per_host=4, stop=threading.Event(), wait_for_retries=0)
    got = [next_within(s) for _ in range(4)]
    assert [g[1].host for g in got if g] == ["big.example.org"] * 4
    for g in got:
        finish(s, g)
    gate.close()


def test_rows_of_other_canvases_on_their_way_keep_the_run_going_and_a_new_host_is_asked(
        gate) -> None:
    C = (3, "c.example.org")
    claims = FakeClaims({A[0]: items(A[0], 1), B[0]: [], C[0]: items(C[0], 1)})
    s = scheduler(claims, gate, hosts=(A, B))
    got = next_within(s)
    assert got is not None
    s.expect()  # its result found another canvas, on a host this run did not know
    finish(s, got)
    out: list = []
    t = threading.Thread(target=lambda: out.append(s.next()), daemon=True)
    t.start()
    time.sleep(0.3)
    assert t.is_alive()  # not finished: the canvas's row is not committed yet
    s.arrived(1, [C])  # the writer committed it
    t.join(5)
    assert not t.is_alive() and out[0] is not None and out[0][0].host_id == C[0]
    finish(s, out[0])
    assert next_within(s) is None  # nothing awaited, nothing left
