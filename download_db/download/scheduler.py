"""Which image next: per-host queues filled by claims, handed out when the host's gate admits."""

from __future__ import annotations

import threading
import time
from collections import deque
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
    woken: bool = False  # work appeared while a claim was under way: ask again after it


class Scheduler:
    """Hands (item, slot) pairs to worker threads.

    Claims are small (a few items per host) so a stopped or killed run holds
    little, and a host's items are claimed only when the host can take them.
    """

    def __init__(self, writer, gate: HostGate, hosts: list[tuple[int, str, bool]], *,
                 per_host: int, stop: threading.Event, max_items: int | None = None,
                 wait_for_retries: float = 300.0) -> None:
        self.writer, self.gate, self.stop = writer, gate, stop
        # a few seconds of work per host per claim: fewer claim round trips through
        # the writer; a stop releases what was not handed out
        self.batch = max(8, per_host * 8)
        self.per_host = per_host
        self.queues = [HostQueue(hid, name, bool(q)) for hid, name, q in hosts]
        self._by_id = {q.host_id: q for q in self.queues}
        self._by_host = {q.host: q for q in self.queues}
        self._cursor = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.handed_out = 0
        self.max_items = max_items
        self.wait_for_retries = wait_for_retries  # linger while retries fall due this soon
        self.in_flight = 0
        self.hold = threading.Event()  # set while the node is offline: hand nothing out

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
            return q.items.popleft(), slot

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
            if q is not None:
                q.in_flight -= 1
                if retry_at is not None:
                    q.exhausted = False
                    if not q.items:
                        q.not_before = min(q.not_before, retry_at) if q.not_before > time.time() \
                            else q.not_before
                elif q.in_flight == 0 and not q.items and not q.exhausted:
                    q.not_before = 0.0  # its last item is done: is there more? ask now
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
        """In memory only: a host with items and free local capacity (round robin,
        quarantined hosts last), else one to refill, else when to look again."""
        wake = now + NO_WORK_RECHECK
        n = len(self.queues)
        refill = None
        for second_pass in (False, True):  # quarantined hosts only when nothing else is ready
            for k in range(n):
                q = self.queues[(self._cursor + k) % n]
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
                self._cursor = (self._cursor + k + 1) % n
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
        if self.in_flight or any(q.refilling or (q.items and q.not_before <= horizon)
                                 for q in self.queues):
            return False
        if all(q.exhausted or q.items for q in self.queues):
            return True  # what is left waits for hosts that are cooling down
        return wake > horizon
