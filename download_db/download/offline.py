"""Is the node offline? Network-level failures and answers in, a verdict and probe URLs out."""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

HOSTS_NEEDED = 3  # distinct hosts failing at the network level, with no answer in between
WINDOW = 120.0  # seconds: failures older than this say nothing about now
KEEP_ANSWERED = 3  # URLs that answered lately, probed first (they prove the way out works)

# what a network-level failure is: the node is offline (ours: no attempt, no breaker);
# unsure (no server has answered lately: not counted either, tried again shortly);
# the host's own (servers answer, this one does not)
OFFLINE, UNSURE, HOST = "offline", "unsure", "host"


class OfflineDetector:
    """Failures in, verdict out (thread-safe; the clock is passed in, so it is pure).

    A failure that never reached a server (DNS, connection refused or unreachable, the
    proxy) says little about one host; the same on several distinct hosts, with no
    server answering in between, says the node has lost its network: our state, not
    the publishers'. Any answer from any server clears the failures before it. A run
    with fewer than two hosts cannot tell the two apart and never decides offline.
    Until some server has answered within the window, a failure is not counted against
    its host either (the run may have started on a node without network). Hosts still
    failing when a probe found the network back are dead publishers: their failures
    stop counting here.
    """

    def __init__(self, hosts_in_run: int, *, hosts_needed: int = HOSTS_NEEDED,
                 window: float = WINDOW) -> None:
        self.needed = min(hosts_needed, hosts_in_run) if hosts_in_run >= 2 else None
        self.window = window
        self.offline = False
        self.failing: dict[str, tuple[float, str]] = {}  # host -> (last failure, its URL)
        self.answered: dict[str, str] = {}  # host -> a URL it answered lately
        self.answered_at: float | None = None
        self.dead: set[str] = set()
        self._lock = threading.Lock()

    def failure(self, url: str, now: float) -> str:
        """A network-level failure of ``url``: OFFLINE, UNSURE or HOST (see above)."""
        host = host_of(url)
        with self._lock:
            if self.needed is None or (host in self.dead and not self.offline):
                return HOST
            if host not in self.dead:
                self.failing[host] = (now, url)
            recent = [h for h, (t, _u) in self.failing.items() if now - t <= self.window]
            if len(recent) >= self.needed:
                self.offline = True
            if self.offline:
                return OFFLINE
            if self.answered_at is None or now - self.answered_at > self.window:
                return UNSURE
            return HOST

    def answer(self, url: str, now: float) -> None:
        """A server answered (any status): the network works; earlier failures are the
        hosts' own."""
        host = host_of(url)
        with self._lock:
            self.answered_at = now
            if not self.offline:
                self.failing.clear()
            self.answered.pop(host, None)
            self.answered[host] = url
            while len(self.answered) > KEEP_ANSWERED:
                self.answered.pop(next(iter(self.answered)))

    def probe_urls(self, busiest: list[str], n_busiest: int = 3) -> list[str]:
        """What to ask while offline: URLs that answered lately, the roots of the run's
        busiest hosts that were not failing, then the failing URLs themselves."""
        with self._lock:
            failing = {h: u for h, (_t, u) in self.failing.items()}
            out = list(reversed(self.answered.values()))
        seen = {host_of(u) for u in out}
        roots = [h for h in busiest if h not in failing and h not in self.dead | seen]
        return out + [f"https://{h}/" for h in roots[:n_busiest]] \
            + [u for h, u in failing.items() if h not in seen]

    def back_online(self, answered: set[str]) -> list[str]:
        """A probe reached these hosts: resume. Failing hosts that did not answer are
        dead publishers from now on; returns them."""
        with self._lock:
            dead = sorted(h for h in self.failing if h not in answered)
            self.dead.update(dead)
            self.failing.clear()
            self.offline = False
            return dead

    def failing_hosts(self) -> list[str]:
        with self._lock:
            return sorted(self.failing)


def host_of(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""
