"""Which image next: per-host queues filled by claims, handed out when the host's gate admits."""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..db.claims import Item
from ..web.politeness import HostGate, Slot

NO_WORK_RECHECK = 300.0  # a host without due work is asked again after this long
# Work due this soon is always waited for, whatever --wait-for-retries says: it is
# not a retry but an image given back a moment ago (its host was busy with another
# process's requests), and ending now would leave it for the next run.
DEFERRAL_GRACE = 10.0
BUSY_RETRY = 0.02  # all of a host's slots taken (maybe by another process): look again
HOLD_LIMIT = 5.0  # a host closed longer than this (cooldown, breaker) gives its claims back
RANK_EVERY = 0.5  # seconds between re-rankings of the hosts (see rank())
DEFAULT_COST = 1.0  # thread-seconds per image assumed before any host has been measured
COST_WEIGHT = 0.1  # each finished image's share of its host's moving cost


@dataclass
class HostQueue:
    host_id: int
    host: str
    quarantined: bool = False
    items: deque = field(default_factory=deque)
    not_before: float = 0.0  # no claim / no request before this time
    refilling: bool = False
    exhausted: bool = False  # no work at all in the database right now
    in_flight: int = 0  # items of this host being processed here
    requests: int = 0  # of those, holding the host's slot (request in progress)
    images: int = 1  # the host's images in the database: its share of the work
    handed: int = 0  # items handed out in this run
    drained: bool = False  # its last claim came back short: what is queued is all there is
    cost: float = 0.0  # moving thread-seconds per image (0: none finished yet)
    woken: bool = False  # work appeared while a claim was under way: ask again after it

    def left(self) -> int:
        """Images this host still has for us, as far as this process can tell cheaply."""
        here = len(self.items) + self.in_flight
        return here if self.drained else max(self.images - self.handed, here, 1)


def rank(queues: Sequence[HostQueue], limit: Callable[[str], int]) -> list[HostQueue]:
    """Hosts in the order free threads should go to them: longest time to finish first.

    A host's time to finish is its images left x thread-seconds per image / its limit
    (the time it needs with all the slots it may use). Threads go to the host that would
    otherwise end last, so when threads are scarcer than the hosts' slots, a big fast
    host and a slow fragile one both keep their slots busy while hosts that will finish
    early anyway wait their turn: longest-processing-time-first, which bounds the
    makespan. Hosts not measured yet count at the median cost of those measured.
    """
    known = [q.cost for q in queues if q.cost > 0]
    default = statistics.median(known) if known else DEFAULT_COST
    return sorted(queues, key=lambda q: -q.left() * (q.cost or default) / max(limit(q.host), 1))


class Scheduler:
    """Hands (item, slot) pairs to worker threads.

    Claims are small (a few items per host) so a stopped or killed run holds
    little, and a host's items are claimed only when the host can take them.
    """

    def __init__(self, writer, gate: HostGate, hosts: Sequence[tuple], *,
                 per_host: int, stop: threading.Event, max_items: int | None = None,
                 wait_for_retries: float = 300.0) -> None:
        self.writer, self.gate, self.stop = writer, gate, stop
        # a few seconds of work per host per claim: fewer claim round trips through
        # the writer; a stop releases what was not handed out
        self.batch = max(8, per_host * 8)
        self.per_host = per_host
        # (host_id, host, quarantined[, n_images]) rows, as db/hosts.with_images gives them
        self.queues = [HostQueue(h[0], h[1], bool(h[2]), images=h[3] if len(h) > 3 else 1)
                       for h in hosts]
        self._by_id = {q.host_id: q for q in self.queues}
        self._by_host = {q.host: q for q in self.queues}
        self._order = list(self.queues)
        self._ranked_at = 0.0
        self._started: dict[int, float] = {}  # image_id -> when it was handed out
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.handed_out = 0
        self.max_items = max_items
        self.wait_for_retries = wait_for_retries  # linger while retries fall due this soon
        self.in_flight = 0
        self.hold = threading.Event()  # set while the node is offline: hand nothing out
        # results with other IIIF canvases not committed yet: their rows are work to
        # wait for, even when every host looks done
        self.awaiting = 0

    # -- for workers -----------------------------------------------------------------
    def next(self) -> tuple[Item, Slot] | None:
        """Block until an item may be fetched; None when the run should end."""
        while not self.stop.is_set():
            if self.hold.is_set():
                with self._lock:
                    self._changed.wait(timeout=0.2)
                continue
            with self._lock:
                if self.max_items is not None and self.handed_out >= self.max_items:
                    return None
                q, wake, refill = self._choose(time.time())
                if q is not None:
                    q.requests += 1  # reserve local capacity while we ask the gate
                elif refill is not None:
                    refill.refilling = True  # this thread claims for it, outside the lock
                elif self._finished(wake):
                    return None
            if q is not None:
                # the gate does file locking: never while holding the scheduler lock
                got = self._take(q)
                if got is not None:
                    return got
                continue
            if refill is not None:
                self._refill(refill)
                continue
            with self._lock:
                self._changed.wait(timeout=min(max(wake - time.time(), 0.005), 0.2))
        return None

    def _take(self, q: HostQueue) -> tuple[Item, Slot] | None:
        now = time.time()
        slot = self.gate.acquire(q.host, now)
        give_back: list[tuple[Item, float]] = []
        with self._lock:
            if isinstance(slot, float):
                q.requests -= 1
                q.not_before = max(q.not_before, slot)
                if slot - now > HOLD_LIMIT:
                    # don't sit on claims a closed host cannot use: they would hold
                    # --max-images allowance and leases other processes could use
                    give_back = [(it, slot) for it in q.items]
                    q.items.clear()
        if give_back:
            self.writer.release(give_back)
        if isinstance(slot, float):
            return None
        with self._lock:
            if not q.items or (self.max_items is not None
                               and self.handed_out >= self.max_items):
                q.requests -= 1
                slot.release()
                return None
            self.handed_out += 1
            self.in_flight += 1
            q.in_flight += 1
            q.handed += 1
            item = q.items.popleft()
            self._started[item.image_id] = time.monotonic()
            return item, slot

    def slot_released(self, host: str, primary: bool = True) -> None:
        """A worker gave a host slot back: waiting workers may take it now.
        primary: the slot handed out with the item (counted in q.requests)."""
        with self._lock:
            q = self._by_host.get(host)
            if q is not None:
                if primary:
                    q.requests = max(q.requests - 1, 0)
                if q.not_before - time.time() < BUSY_RETRY * 2:
                    q.not_before = 0.0  # it was only waiting for a slot
            self._changed.notify(2)  # not all: one slot serves one waiter

    def done(self, item: Item, retry_at: float | None = None) -> None:
        """A worker finished an item (its slot is released); retry_at: when the
        image is due again (transient failure or deferral), if it is."""
        with self._lock:
            self.in_flight -= 1
            q = self._by_id.get(item.host_id)
            began = self._started.pop(item.image_id, None)
            if q is not None:
                q.in_flight -= 1
                if began is not None:
                    took = time.monotonic() - began
                    q.cost = took if q.cost == 0 else q.cost + COST_WEIGHT * (took - q.cost)
                if retry_at is not None:
                    q.exhausted = False
                    if not q.items:
                        q.not_before = min(q.not_before, retry_at) if q.not_before > time.time() \
                            else q.not_before
                elif q.in_flight == 0 and not q.items and not q.exhausted:
                    q.not_before = 0.0  # its last item is done: is there more? ask now
            self._changed.notify_all()

    def expect(self) -> None:
        """A result on its way to the writer found other canvases (rows to come)."""
        with self._lock:
            self.awaiting += 1

    def arrived(self, results: int, added: list[tuple[int, str]]) -> None:
        """The writer committed that many such results, adding these (host_id, host)
        rows: their hosts have work again, a host new to this run gets a queue."""
        with self._lock:
            self.awaiting = max(self.awaiting - results, 0)
            for host_id, host in added:
                q = self._by_id.get(host_id)
                if q is None:
                    q = HostQueue(host_id, host)
                    self.queues.append(q)
                    self._by_id[host_id], self._by_host[host] = q, q
                q.exhausted, q.not_before = False, 0.0  # the gate still says when
            if added:
                self._ranked_at = 0.0  # rank the new host in before the next hand-out
            self._changed.notify_all()

    def wake(self, host_id: int) -> None:
        """Work for this queue may have appeared in the database (an image failed in a
        way another queue handles): ask for it again, now."""
        with self._lock:
            q = self._by_id.get(host_id)
            if q is None:
                return
            if q.refilling:
                q.woken = True  # its claim may have looked before this work was written
            elif q.exhausted:
                q.exhausted = False
                q.not_before = 0.0
            self._changed.notify_all()

    def resume(self) -> None:
        """The node is back online: hand out work again."""
        with self._lock:
            self.hold.clear()
            self._changed.notify_all()

    def remaining(self) -> list[tuple[Item, float]]:
        """Claimed items never handed out, with when their host may be asked again
        (to release them at the end of the run)."""
        with self._lock:
            out = [(it, q.not_before) for q in self.queues for it in q.items]
            for q in self.queues:
                q.items.clear()
            return out

    # -- internals -----------------------------------------------------------------------
    def _choose(self, now: float) -> tuple[HostQueue | None, float, HostQueue | None]:
        """In memory only: a host with items and free local capacity (in rank() order,
        quarantined hosts last), else one to refill, else when to look again."""
        wake = now + NO_WORK_RECHECK
        if now - self._ranked_at >= RANK_EVERY:
            self._order = rank(self.queues, self.gate.concurrency)
            self._ranked_at = now
        refill = None
        for second_pass in (False, True):  # quarantined hosts only when nothing else is ready
            for q in self._order:
                if q.quarantined != second_pass or q.refilling:
                    continue
                if q.not_before > now:
                    wake = min(wake, q.not_before)
                    continue
                if not q.items:
                    if refill is None and not q.exhausted:
                        refill = q  # proposed only: next() decides
                    continue
                if q.requests >= self.gate.concurrency(q.host):
                    continue  # this process holds all its slots for the host
                return q, now, None
            if refill is not None:
                return None, now, refill
        return None, wake, refill

    def _refill(self, q: HostQueue) -> None:
        items = []
        due = None
        n = self.batch
        if self.max_items is not None:  # never hold more than this run may still hand out
            with self._lock:
                queued = sum(len(x.items) for x in self.queues)
                n = max(min(n, self.max_items - self.handed_out - queued), 0)
        try:
            items = self.writer.claim(q.host_id, n) if n else []
            if not items:
                due = self.writer.next_due(q.host_id)
        finally:
            with self._lock:
                q.items.extend(items)
                q.drained = len(items) < n
                q.refilling = False
                now = time.time()
                if not items and q.woken:
                    q.exhausted, q.not_before = False, 0.0
                elif not items:
                    q.exhausted = due is None and q.in_flight == 0
                    q.not_before = max(due or 0.0, now + 1.0) if due is not None \
                        else now + NO_WORK_RECHECK
                q.woken = False
                self._changed.notify_all()

    def _finished(self, wake: float) -> bool:
        """Nothing in flight, and nothing (queued or in the database) due soon."""
        horizon = time.time() + max(self.wait_for_retries, DEFERRAL_GRACE)
        if self.in_flight or self.awaiting or any(
                q.refilling or (q.items and q.not_before <= horizon) for q in self.queues):
            return False
        if all(q.exhausted or q.items for q in self.queues):
            return True  # what is left waits for hosts that are cooling down
        return wake > horizon
