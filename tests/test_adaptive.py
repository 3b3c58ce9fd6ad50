"""The adaptive per-host controller (web/adaptive.py) as a pure unit, on model hosts."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from download_db.web.adaptive import OK, OVERLOAD, RESET, TIMEOUT, Limiter


def run_host(lim: Limiter, cap: int, n: int, base: float = 0.05, fail_past: int | None = None,
             seed: int = 1) -> tuple[Limiter, list[int], int]:
    """A model host: `cap` requests at once at its base latency, slower with its queue
    beyond that (latency grows with in-flight / cap), 503 past `fail_past` at once (each
    request beyond it fails). The controller always has its limit in flight."""
    rnd = random.Random(seed)
    trace, overloads = [], 0
    for _ in range(n):
        k = lim.current()
        if fail_past is not None and k > fail_past and rnd.random() < (k - fail_past) / k:
            lim = lim.update(OVERLOAD, 0.01, k - 1)
            overloads += 1
        else:
            lim = lim.update(OK, base * max(1.0, k / cap) * (1 + 0.1 * rnd.random()), k - 1)
        trace.append(lim.current())
    return lim, trace, overloads


def test_grows_on_a_healthy_host_up_to_the_max_and_stays():
    lim, trace, _ = run_host(Limiter.start(2, 16), cap=100, n=400)
    assert trace[0] == 2 and lim.current() == 16
    assert trace == sorted(trace)  # never shrank: nothing told it to
    assert set(trace[-100:]) == {16}


def test_halves_on_503_timeouts_and_resets_once_per_window():
    for outcome in (OVERLOAD, TIMEOUT, RESET):
        lim = Limiter(8.0, 16)
        once = lim.update(outcome)
        assert once.current() == 4
        # the other requests in flight saw the same overload: no second halving
        assert once.update(outcome).update(outcome).current() == 4
    floor = Limiter(1.0, 16).update(OVERLOAD)
    assert floor.current() == 1


def test_latency_over_the_baseline_shrinks_in_proportion():
    lim = Limiter(12.0, 32)
    for _ in range(5):
        lim = lim.update(OK, 0.1, 11)
    assert lim.current() >= 12
    slow = lim
    for _ in range(3):  # twice the baseline: requests queue at the host
        slow = slow.update(OK, 0.2, 11)
    assert 6 <= slow.current() < 12


def test_settles_near_the_capacity_instead_of_oscillating():
    for cap in (4, 8, 16):
        _, trace, _ = run_host(Limiter.start(2, 64), cap=cap, n=3000)
        tail = trace[-1000:]
        assert max(tail) - min(tail) <= max(1, cap // 4)
        assert cap <= min(tail) and max(tail) <= cap * 1.25 + 1  # within the tolerance


def test_a_fragile_host_is_rarely_tripped():
    _, trace, overloads = run_host(Limiter.start(2, 16), cap=3, n=3000, fail_past=3)
    assert overloads / 3000 <= 0.01  # its edge is probed rarely
    assert 2 <= sum(trace[-1000:]) / 1000 <= 3.5


def test_does_not_grow_while_the_limit_is_not_in_use():
    lim = Limiter(8.0, 16)
    for _ in range(200):
        lim = lim.update(OK, 0.05, in_flight=1)  # one request at a time: no evidence
    assert lim.current() == 8


def test_a_host_slower_for_good_is_rebaselined_at_one():
    lim = Limiter.start(4, 16)
    for _ in range(20):
        lim = lim.update(OK, 0.05, 3)
    for _ in range(300):
        lim = lim.update(OK, 0.5, lim.current() - 1)  # ten times slower, whatever we do
    assert lim.base >= 0.4 and lim.current() > 1  # grows again from the new normal


@given(st.integers(1, 64), st.integers(1, 64),
       st.lists(st.tuples(st.sampled_from([OK, OK, OK, OVERLOAD, TIMEOUT, RESET]),
                          st.none() | st.floats(0, 30), st.none() | st.integers(0, 100)),
                max_size=300))
def test_the_limit_stays_within_one_and_the_max(start, most, events):
    lim = Limiter.start(start, most)
    assert 1 <= lim.current() <= most
    for outcome, latency, in_flight in events:
        lim = lim.update(outcome, latency, in_flight)
        assert 1 <= lim.current() <= most and 1.0 <= lim.limit <= most
