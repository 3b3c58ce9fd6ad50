"""An I/O budget in bytes per second, shared by threads: take(n) sleeps until n bytes fit."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

BURST = 0.25  # seconds of budget that may be spent ahead (one file need not wait for itself)


class Throttle:
    """Pace reads to ``rate`` bytes/s over all threads (0 or None: no limit).

    Each take() books its bytes on a timeline (``_paid_until``: when everything
    booked so far is paid for at the rate) and sleeps until that time, less a small
    burst; the booking is under the lock, the sleep is not."""

    def __init__(self, rate: float | None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = rate or 0.0
        self.clock, self.sleep = clock, sleep
        self._lock = threading.Lock()
        self._paid_until = clock()
        self.slept = 0.0

    def take(self, n: int) -> float:
        """Book ``n`` bytes; returns the seconds slept."""
        if self.rate <= 0 or n <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            self._paid_until = max(self._paid_until, now - BURST) + n / self.rate
            wait = self._paid_until - now - BURST
            if wait > 0:
                self.slept += wait
        if wait > 0:
            self.sleep(wait)
            return wait
        return 0.0
