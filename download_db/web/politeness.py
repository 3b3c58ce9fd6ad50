"""Per-host politeness for all threads and processes on this machine: slots, rate, breaker."""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .adaptive import Limiter
from .policy import HostPolicy
from .slots import SlotFiles

# Shared state per host, in a small file guarded by flock:
# next request time, cooldown end, breaker-open end, half-open probe start, opens in a row,
# then the adaptive controller's (web/adaptive.py) limit, base, short, hold and ceiling.
_STATE = struct.Struct("<dddddddddd")
_FIELDS = _STATE.size // 8
_LIMIT = 5  # index of the adaptive limit (0: the host has no controller state yet)
MAX_RETRY_AFTER = 3600.0  # a silly Retry-After (or date) must not park a host for days
DEFAULT_COOLDOWN = 60.0  # 429/503 without a usable Retry-After
STATE_TTL = 0.5  # how stale a calm host's shared state may be before we read it again


def default_lock_dir(db_path: str | os.PathLike) -> Path:
    """Node-local directory for the locks of one database (tmpfs when available).

    Locks coordinate processes on one machine; array tasks on other nodes own
    disjoint hosts (see the cluster docs), so nothing needs to cross nodes.
    """
    key = hashlib.sha1(str(Path(db_path).resolve()).encode()).hexdigest()[:16]
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(os.environ.get(
        "TMPDIR", "/tmp"))
    return base / f"gbif-download-db-{key}"


@dataclass(frozen=True)
class Politeness:
    concurrency: int = 4  # simultaneous requests per host, all processes together
    rate: float = 0.0  # requests per second per host (0 = only the concurrency limit)
    window: float = 300.0  # breaker: look at the last N seconds of outcomes
    min_requests: int = 20  # breaker: no verdict on fewer host-level outcomes
    failure_rate: float = 0.5  # breaker opens at or above this failure fraction
    open_seconds: float = 60.0  # first open period; doubles per failed probe
    max_open_seconds: float = 1800.0
    quarantine_after: int = 5  # consecutive opens without a success -> quarantined


class _Window:
    """Outcomes of the last `window` seconds with running counts (O(1) per outcome)."""

    def __init__(self) -> None:
        self.q: deque[tuple[float, bool]] = deque()
        self.fails = 0

    def add(self, now: float, failure: bool, window: float) -> tuple[int, int]:
        self.q.append((now, failure))
        self.fails += failure
        while self.q and self.q[0][0] < now - window:
            self.fails -= self.q.popleft()[1]
        return self.fails, len(self.q)

    def clear(self) -> None:
        self.q.clear()
        self.fails = 0


class Slot:
    """A held concurrency slot; release() exactly once."""

    def __init__(self, gate: HostGate, host: str, slot: tuple[int, int], probe: bool) -> None:
        self._gate, self.host, self._slot, self.probe = gate, host, slot, probe
        gate._held_by_us(host, +1)

    def release(self) -> None:
        if self._slot[0] >= 0:
            self._gate._free_slot(self.host, self._slot)
            self._slot = (-1, -1)
            self._gate._held_by_us(self.host, -1)


class HostGate:
    """acquire(host) -> Slot or a time to come back; record() outcomes for the breaker."""

    def __init__(self, lock_dir: str | os.PathLike, policy: Politeness,
                 split: dict[str, tuple[int, int]] | None = None,
                 on_quarantine: Callable[[str, int], None] | None = None,
                 hosts: HostPolicy | None = None) -> None:
        self.dir = Path(lock_dir)
        # per-host max at once and rate (the host policy); policy's when None
        self.hosts = hosts
        # told (host, opens) once per quarantine, by the gate that decides it
        self.on_quarantine = on_quarantine
        self.dir.mkdir(parents=True, exist_ok=True)
        self.policy = policy
        # Hosts shared with other array tasks: host -> (part, parts). This task
        # gets 1/parts of the host's concurrency and rate, so the tasks together
        # stay within the limits, wherever they run.
        self.split = split or {}
        self._local = threading.Lock()  # flock does not exclude threads sharing one fd
        self._state_fds: dict[str, int] = {}
        self._outcomes: dict[str, _Window] = {}
        self._seen: dict[str, tuple[float, list[float]]] = {}  # last state read, per host
        self._held: dict[str, int] = {}  # slots this process holds, per host
        self._told: dict[str, int] = {}  # adaptive limits last recorded, per host
        self._names: dict[str, str] = {}
        self._slots = SlotFiles(self.dir, self._name)

    def _held_by_us(self, host: str, n: int) -> None:
        with self._local:
            self._held[host] = self._held.get(host, 0) + n

    def news(self, host: str, limit: int) -> bool:
        """True once per change of a host's adaptive limit in this process: worth
        recording in the hosts table."""
        with self._local:
            if self._told.get(host) == limit:
                return False
            self._told[host] = limit
            return True

    def in_flight(self, host: str) -> int:
        """Requests to the host this process has under way (its slots held)."""
        return self._held.get(host, 0)

    # -- shared state file ---------------------------------------------------
    def _name(self, host: str) -> str:
        name = self._names.get(host)
        if name is None:
            # file names never come from remote text: a hash of the host name
            part = self.split.get(host)
            key = host if part is None else f"{host}#{part[0]}/{part[1]}"
            name = self._names[host] = "h" + hashlib.sha1(
                key.encode("utf-8", "replace")).hexdigest()[:20]
        return name

    def concurrency(self, host: str) -> int:
        """Requests the host may have at once (this task's share of a split host); for an
        adaptive host, its controller's current limit as last read (no file access)."""
        most = self.hosts.limits(host).max_at_once if self.hosts else self.policy.concurrency
        part = self.split.get(host)
        most = most if part is None else max(1, most // part[1])
        if self.hosts is not None and self.hosts.limits(host).adaptive:
            seen = self._seen.get(host)
            now = seen[1][_LIMIT] if seen is not None else 0.0
            most = max(1, min(most, int(now) if now >= 1 else self.hosts.limits(host).start))
        return most

    def adaptive(self, host: str) -> bool:
        return self.hosts is not None and self.hosts.limits(host).adaptive

    def _limiter(self, host: str, st: list[float]) -> Limiter:
        lim = self.hosts.limits(host) if self.hosts else None
        assert lim is not None
        part = self.split.get(host)
        most = lim.max_at_once if part is None else max(1, lim.max_at_once // part[1])
        if st[_LIMIT] < 1:
            return Limiter.start(lim.start, most)
        return Limiter(min(st[_LIMIT], most), most, *st[_LIMIT + 1:])

    def adapt(self, host: str, outcome: str, latency: float | None,
              in_flight: int | None) -> int:
        """Feed one finished request to the host's controller, shared by every process
        through the state file; returns the host's limit now."""
        def f(st: list[float]) -> int:
            lim = self._limiter(host, st).update(outcome, latency, in_flight)
            st[_LIMIT:] = [lim.limit, lim.base, lim.short, lim.hold, lim.ceiling]
            return lim.current()

        return int(self._update(host, f))  # type: ignore[arg-type]

    def rate(self, host: str) -> float:
        rate = self.hosts.limits(host).max_rate if self.hosts else self.policy.rate
        part = self.split.get(host)
        return rate if part is None else rate / part[1]

    def most_at_once(self) -> int:
        """The highest concurrency of any host (one process's connection pool size)."""
        return self.hosts.largest() if self.hosts else self.policy.concurrency

    def _state_fd(self, host: str) -> int:
        fd = self._state_fds.get(host)
        if fd is None:
            fd = os.open(self.dir / f"{self._name(host)}.state", os.O_RDWR | os.O_CREAT, 0o644)
            self._state_fds[host] = fd
        return fd

    def _update(self, host: str, fn, now: float | None = None) -> object:
        """Run fn(list_of_5_floats) -> result under the host's lock; write back."""
        with self._local:
            fd = self._state_fd(host)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                raw = os.pread(fd, _STATE.size, 0)
                st = list(_STATE.unpack(raw)) if len(raw) == _STATE.size else [0.0] * _FIELDS
                before = list(st)
                result = fn(st)
                if st != before:
                    os.pwrite(fd, _STATE.pack(*st), 0)
                self._seen[host] = (time.time() if now is None else now, st)
                return result
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _calm(self, host: str, now: float) -> list[float] | None:
        """The host's state as read less than STATE_TTL ago, if it has no cooldown,
        breaker or probe in force: then, without a rate limit, a request needs no
        read of the shared file (another process's 429 is seen within STATE_TTL)."""
        seen = self._seen.get(host)
        if seen is None or self.rate(host) > 0 or not 0 <= now - seen[0] < STATE_TTL:
            return None
        st = seen[1]
        return st if st[1] <= now and st[2] == 0 and st[3] == 0 else None

    def state(self, host: str) -> dict[str, float]:
        st = self._update(host, lambda s: list(s))
        names = ("next_at", "cooldown_until", "open_until", "probe_at", "opens", "limit",
                 "base", "short", "hold", "ceiling")
        return dict(zip(names, st, strict=True))

    # -- acquiring ---------------------------------------------------------------
    def acquire(self, host: str, now: float | None = None) -> Slot | float:
        """A slot if the host may be asked now, else the epoch time to retry at."""
        now = time.time() if now is None else now
        rate = self.rate(host)
        probe = False

        def admit(st: list[float]) -> float | None:
            nonlocal probe
            next_at, cooldown, open_until, probe_at = st[:4]
            if cooldown > now:
                return cooldown
            if open_until > now:
                return open_until
            if open_until > 0:  # half-open: one probe at a time
                if probe_at > 0 and now - probe_at < 120:
                    return now + 5.0
                st[3] = now
                probe = True
            if rate > 0:
                if next_at > now:
                    return next_at
                st[0] = max(next_at, now) + 1.0 / rate
            return None

        slot = self._try_slot(host)
        if slot[0] < 0:
            return now + 0.02  # all slots busy (here or in another process): come back soon
        if self._calm(host, now) is not None:
            return Slot(self, host, slot, False)
        wait = self._update(host, admit, now)
        if wait is not None:
            self._free_slot(host, slot)
            return float(wait)  # type: ignore[arg-type]
        return Slot(self, host, slot, probe)

    def pace(self, host: str, now: float | None = None) -> float | None:
        """A rate token for another request on a slot already held: None if it
        may go now, else the time it may go (cooldowns still apply)."""
        now = time.time() if now is None else now
        rate = self.rate(host)

        def take(st: list[float]) -> float | None:
            if st[1] > now:
                return st[1]
            if rate > 0:
                if st[0] > now:
                    return st[0]
                st[0] = max(st[0], now) + 1.0 / rate
            return None

        if self._calm(host, now) is not None:
            return None
        wait = self._update(host, take, now)
        return None if wait is None else float(wait)  # type: ignore[arg-type]

    def _try_slot(self, host: str) -> tuple[int, int]:
        return self._slots.take(host, self.concurrency(host))

    def _free_slot(self, host: str, slot: tuple[int, int]) -> None:
        self._slots.free(host, slot)

    # -- outcomes --------------------------------------------------------------------
    def cool_down(self, host: str, seconds: float, now: float | None = None) -> float:
        """Stop asking the host for ``seconds`` (capped); returns the end time."""
        now = time.time() if now is None else now
        until = now + min(max(seconds, 1.0), MAX_RETRY_AFTER)

        def f(st: list[float]) -> float:
            st[1] = max(st[1], until)
            return st[1]

        return float(self._update(host, f))  # type: ignore[arg-type]

    def restore(self, host: str, cooldown_until: float | None, open_until: float | None) -> None:
        """Seed the shared state from the hosts table (the lock directory is
        node-local and may be gone after a restart or on another node)."""
        def f(st: list[float]) -> None:
            if cooldown_until:
                st[1] = max(st[1], min(cooldown_until, time.time() + MAX_RETRY_AFTER))
            if open_until and st[2] == 0:
                st[2] = open_until
                st[4] = max(st[4], 1.0)

        if cooldown_until or open_until:
            self._update(host, f)

    def record(self, slot: Slot, host_failure: bool | None,
               now: float | None = None) -> str | None:
        """Feed one outcome to the breaker. host_failure: True for timeouts,
        connection errors, 5xx; False for a good answer (including 404: the
        image's fault, not the host's); None for outcomes that say nothing.
        Returns 'opened', 'closed' or 'quarantine' on a state change."""
        now = time.time() if now is None else now
        opens = 0.0
        if host_failure is None:
            if slot.probe:
                self._update(slot.host, lambda st: st.__setitem__(3, 0.0))
            return None
        p = self.policy
        with self._local:
            w = self._outcomes.get(slot.host)
            if w is None:
                w = self._outcomes[slot.host] = _Window()
            fails, total = w.add(now, host_failure, p.window)
            seen = self._seen.get(slot.host)
        # Most outcomes change nothing shared: skip the file unless this one may
        # (a probe, the threshold reached, a success that ends a run of opens).
        tripping = total >= p.min_requests and fails / total >= p.failure_rate
        if not slot.probe and not tripping and seen is not None and seen[1][2] == 0 \
                and (host_failure or seen[1][4] == 0):
            return None

        def f(st: list[float]) -> str | None:
            nonlocal opens
            if slot.probe or st[2] > 0:
                if not host_failure and slot.probe:
                    st[2] = st[3] = st[4] = 0.0
                    return "closed"
                if host_failure and slot.probe:
                    st[4] += 1  # opens in a row; the period doubles with each
                    st[2] = now + min(p.open_seconds * 2 ** (st[4] - 1), p.max_open_seconds)
                    st[3] = 0.0
                    opens = st[4]
                    return "quarantine" if st[4] >= p.quarantine_after else "opened"
                return None
            if total >= p.min_requests and fails / total >= p.failure_rate:
                st[4] += 1
                st[2] = now + p.open_seconds
                return "opened"
            if not host_failure:
                st[4] = 0.0
            return None

        change = self._update(slot.host, f, now)
        if change == "opened" or change == "quarantine":
            with self._local:
                w.clear()
        # Every failed probe after the quarantine says "quarantine" again, in any
        # process: only the one that reaches the threshold tells.
        if change == "quarantine" and opens == p.quarantine_after and self.on_quarantine:
            self.on_quarantine(slot.host, int(opens))
        return change  # type: ignore[return-value]

    def close(self) -> None:
        with self._local:
            for fd in self._state_fds.values():
                os.close(fd)
            self._state_fds.clear()
        self._slots.close()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), capped."""
    if not value:
        return None
    now = time.time() if now is None else now
    v = value.strip()
    if v.isascii() and v.isdigit():
        return min(float(v), MAX_RETRY_AFTER)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(v).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(when - now, 0.0), MAX_RETRY_AFTER)
