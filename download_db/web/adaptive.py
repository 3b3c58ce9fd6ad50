"""Adaptive concurrency per host: latencies and outcomes in, a limit out (pure; Vegas/AIMD-like)."""

from __future__ import annotations

from dataclasses import dataclass, replace

OK = "ok"  # an answer, good or not the host's fault (200, 404, an HTML page)
OVERLOAD = "overload"  # 429 or 503: the host says it has too much
TIMEOUT = "timeout"  # no answer in time
RESET = "reset"  # the connection failed or was cut (refused, reset, truncated)

SHORT_ALPHA = 0.3  # weight of a new latency in the recent (short-term) average
# Recent latency this far over the baseline means requests queue at the host: shrink.
# Netflix concurrency-limits' Gradient2 uses a tolerance the same way (rttTolerance).
TOLERANCE = 1.25
BACKOFF = 0.5  # multiplicative decrease on 429/503, timeouts and resets (TCP's AIMD)
# From one below the limit at which the host last failed, grow this many times more
# slowly: probe a fragile host's edge rarely instead of tripping it every few requests.
PROBE_SLOWDOWN = 32.0


@dataclass(frozen=True)
class Limiter:
    """One host's controller state. limit is fractional; current() is what is enforced."""

    limit: float
    max_limit: int
    base: float = 0.0  # baseline latency (seconds; 0 = none yet): the host unloaded
    short: float = 0.0  # recent latency
    hold: float = 0.0  # samples before another decrease may happen (one per window)
    ceiling: float = 0.0  # the limit at the last failure (0 = none yet)

    @classmethod
    def start(cls, start: int, max_limit: int) -> Limiter:
        max_limit = max(1, max_limit)
        return cls(float(min(max(1, start), max_limit)), max_limit)

    def current(self) -> int:
        return max(1, min(self.max_limit, int(self.limit)))

    def update(self, outcome: str, latency: float | None = None,
               in_flight: int | None = None) -> Limiter:
        """The state after one finished request. in_flight: requests to the host still
        running when it finished (None: unknown, taken as the limit in use)."""
        hold = max(0.0, self.hold - 1)
        if outcome != OK:
            if hold > 0:  # one decrease per window of requests: they all saw one state
                return replace(self, hold=hold)
            limit = max(1.0, self.limit * BACKOFF)
            return replace(self, limit=limit, hold=limit, ceiling=self.limit)
        if latency is None or latency < 0:
            return replace(self, hold=hold)
        short = latency if self.short == 0 else self.short + SHORT_ALPHA * (latency - self.short)
        # the baseline is the fastest answer seen (TCP Vegas' base RTT): a baseline that
        # drifted up with the latency would let growing into a queue pass for normal
        base = latency if self.base == 0 else min(latency, self.base)
        limit = self.limit
        if short > TOLERANCE * base:
            if hold == 0 and limit <= 1:
                base = short  # slow even one at a time: the host's normal has changed
            elif hold == 0:  # queueing at the host: shrink by how much slower it got
                limit = max(1.0, limit * max(BACKOFF, TOLERANCE * base / short))
                hold = limit
        elif in_flight is None or in_flight + 1 >= limit * 0.5:
            # fast and clean while the limit is in use: about one more per window
            step = 1.0 / limit
            if self.ceiling and limit + step > self.ceiling - 1:
                step /= PROBE_SLOWDOWN
            limit += step
        limit = min(limit, float(self.max_limit))
        return Limiter(limit, self.max_limit, base, short, hold, self.ceiling)


def outcome_of(error_type: str | None, http_status: int | None) -> str | None:
    """What a finished request tells the controller (None: nothing about the host's load).
    error_type None: an answer came back; a 404 or an HTML page is still a clean answer."""
    if error_type is None:
        return OK
    if http_status in (429, 502, 503, 504) or error_type == "rate_limited":
        return OVERLOAD
    if error_type == "timeout":
        return TIMEOUT
    if error_type in ("connection_broken", "truncated", "empty_response"):
        return RESET
    if error_type in ("dns_error", "tls_error", "proxy_error", "server_error"):
        return None  # not the host's load: our network, its certificate, a bug of its own
    return OK
