"""Slack notifications of a download run, posted by a background thread that never blocks it."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from .config import ENV_SLACK_URL as ENV_URL
from .config import check_webhook_url as check_url
from .errors import UsageError
from .progress import fmt_secs

log = logging.getLogger(__name__)

# Set by the first process in the environment of the copies --processes starts:
# they report only what the first process cannot see (their crash, quarantines).
ENV_CHILD = "GBIF_DOWNLOAD_DB_CHILD"
TIMEOUT = 5.0  # seconds, connect and each read: a slow Slack only delays the sender thread
QUEUE_MAX = 100  # messages waiting; beyond that the oldest are dropped
FLUSH_WAIT = 3.0  # seconds the end of a run waits for queued messages

_URL_RE = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.I)


def is_child() -> bool:
    """True in a copy started by --processes."""
    return os.environ.get(ENV_CHILD) == "1"


def redact(text: str, limit: int = 200) -> str:
    """Text fit for a message: URLs removed (a webhook or a signed URL is a secret),
    whitespace collapsed, cut to ``limit`` characters."""
    text = " ".join(_URL_RE.sub("<url>", text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _slack_escape(text: str) -> str:
    # Slack reads <...> as links and mentions; host names and messages are data
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Notifier:
    """send() queues a message and returns at once; one daemon thread posts them.

    Without a URL every call is a no-op. A failed post is logged once per
    notifier, by exception type or HTTP status only: exception texts may
    contain the URL, which is a secret.
    """

    def __init__(self, url: str | None, label: str, *, timeout: float = TIMEOUT,
                 maxsize: int = QUEUE_MAX) -> None:
        self._url = url or None
        self.label = label
        self.timeout = timeout
        self._q: deque[bytes] = deque(maxlen=maxsize)  # a full deque drops its oldest
        self._cv = threading.Condition()
        self._busy = False
        self._closed = False
        self._warned = False
        self.sent = self.failed = self.dropped = 0
        self._thread: threading.Thread | None = None
        if self._url:
            self._thread = threading.Thread(target=self._run, name="slack-notify", daemon=True)
            self._thread.start()

    def __repr__(self) -> str:
        return f"Notifier(enabled={self.enabled}, label={self.label!r})"

    @property
    def enabled(self) -> bool:
        return self._url is not None

    def scrub(self, text: str) -> str:
        """Text without the webhook URL or its path (the path is the secret)."""
        if self._url:
            text = text.replace(self._url, "<url>")
            path = urlsplit(self._url).path
            if len(path) > 1:
                text = text.replace(path, "<secret>")
        return text

    def send(self, text: str) -> None:
        if self._url is None:
            return
        body = json.dumps({"text": _slack_escape(f"[{self.label}] {text}")}).encode()
        with self._cv:
            if self._closed:
                return
            if len(self._q) == self._q.maxlen:
                self.dropped += 1
            self._q.append(body)
            self._cv.notify()

    def close(self, wait: float = FLUSH_WAIT) -> bool:
        """Give queued messages up to ``wait`` seconds, then drop the rest.
        True if everything queued was handed to Slack (delivered or failed)."""
        if self._thread is None:
            return True
        end = time.monotonic() + wait
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            while self._q or self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            flushed = not self._q and not self._busy
            self.dropped += len(self._q)
            self._q.clear()
        return flushed

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._q and not self._closed:
                    self._cv.wait()
                if not self._q:
                    return
                body = self._q.popleft()
                self._busy = True
            try:
                self._post(body)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _post(self, body: bytes) -> None:
        req = urllib.request.Request(self._url or "", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            # urllib, not requests: it logs nothing, while urllib3's debug log
            # would print the request path, which is the webhook's secret
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                r.read(4096)
            self.sent += 1
            return
        except urllib.error.HTTPError as e:
            e.close()
            why = f"HTTP {e.code}"
        except urllib.error.URLError as e:
            inner = e.reason if isinstance(e.reason, BaseException) else None
            why = "URLError" + (f" ({type(inner).__name__})" if inner else "")
        except Exception as e:  # noqa: BLE001 - a notification must never take the run down
            why = type(e).__name__
        if not self._warned:
            self._warned = True
            log.warning("notify: a Slack notification failed (%s); the download goes on, "
                        "further failures are not logged", why)
        self.failed += 1


def _count(counts: dict, *keys: str) -> int:
    return sum(int(counts.get(k, 0) or 0) for k in keys)


def add_counts(*parts: dict) -> dict:
    """Sum the numeric counts of several processes."""
    out: dict = {}
    for p in parts:
        for k, v in p.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = out.get(k, 0) + v
    return out


class RunNotes:
    """What one download process tells Slack, and when.

    The first process reports start, milestones, stalls, the end, its crash and
    quarantines; a copy started by --processes only its crash and quarantines,
    so N processes do not send N of everything.
    """

    def __init__(self, notifier: Notifier, *, every: int = 10_000, stall_minutes: float = 30.0,
                 child: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.n = notifier
        self.every = every
        self.stall_seconds = stall_minutes * 60
        self.child = child
        self.clock = clock
        self.t0 = clock()
        self.todo = 0
        # set by the first process: others(fresh=False) -> counts of the other processes,
        # handed in by the stage (which reads them from the runs table)
        self.others: Callable[..., dict] | None = None
        self._milestone = 0
        self._done = -1
        self._moved_at = self.t0
        self._stalled_at: float | None = None
        self._host_tally: dict[int, list[int]] = {}
        self._host_ids: dict[str, int] = {}

    @property
    def enabled(self) -> bool:
        return self.n.enabled

    @property
    def leader(self) -> bool:
        return self.n.enabled and not self.child

    def _totals(self, own: dict, fresh: bool = False) -> dict:
        return add_counts(own, self.others(fresh)) if self.others is not None else own

    # -- events -----------------------------------------------------------------------
    def start(self, todo: int, hosts: int, processes: int) -> None:
        self.todo = todo
        self.t0 = self._moved_at = self.clock()
        if self.leader:
            procs = f" in {processes} processes" if processes > 1 else ""
            self.n.send(f":arrow_forward: download started{procs}: {todo:,} images with "
                        f"work left on {hosts:,} hosts")

    def tick(self, own: dict) -> None:
        """Called often (every 0.25 s) by the progress loop: milestones and stalls."""
        if not self.leader:
            return
        now = self.clock()
        c = self._totals(own)
        ok = _count(c, "success")
        done = ok + _count(c, "failed_transient", "failed_permanent")
        if self.every > 0 and ok // self.every > self._milestone:
            self._milestone = ok // self.every
            self.n.send(f":white_check_mark: {ok:,} images saved; {self._line(c, now)}")
        if done != self._done:
            if self._stalled_at is not None:
                self.n.send(f":arrow_forward: progress resumed after "
                            f"{fmt_secs(now - self._moved_at)} without any image finished")
                self._stalled_at = None
            self._done, self._moved_at = done, now
        elif (self.stall_seconds > 0 and self._stalled_at is None
              and now - self._moved_at >= self.stall_seconds):
            self._stalled_at = now
            self.n.send(f":warning: stalled: no image finished for "
                        f"{fmt_secs(now - self._moved_at)} (the run is still alive); "
                        f"{self._line(c, now)}")

    def _line(self, c: dict, now: float) -> str:
        ok = _count(c, "success")
        failed = _count(c, "failed_transient", "failed_permanent")
        dt = max(now - self.t0, 1e-9)
        todo = f"{ok + failed:,}/{self.todo:,} done, " if self.todo else ""
        return (f"{todo}{ok:,} saved, {failed:,} failed, {ok / dt:,.1f} img/s, "
                f"running {fmt_secs(dt)}")

    def finish(self, own: dict, how: str) -> None:
        """The run ended normally; ``how`` is 'finished', 'stopped by a signal', ..."""
        if not self.leader:
            return
        now = self.clock()
        c = self._totals(own, fresh=True)
        ok = _count(c, "success")
        dt = max(now - self.t0, 1e-9)
        self.n.send(
            f":checkered_flag: download {how} after {fmt_secs(dt)}: {ok:,} saved, "
            f"{_count(c, 'failed_transient'):,} failed (will retry), "
            f"{_count(c, 'failed_permanent'):,} failed permanently, "
            f"{_count(c, 'deferred'):,} deferred, {ok / dt:,.1f} img/s, "
            f"{_count(c, 'bytes_fetched') / 1e6:,.1f} MB fetched")

    def notice(self, text: str) -> None:
        """A state of the run worth hearing about (network down or back); the first
        process speaks for all."""
        if self.leader:
            self.n.send(text)

    def crash(self, exc: BaseException) -> None:
        """The type and a redacted, short message: never a traceback or a URL."""
        if not self.enabled:
            return
        who = "a --processes copy" if self.child else "download"
        if isinstance(exc, KeyboardInterrupt):
            self.n.send(f":stop_sign: {who} interrupted (KeyboardInterrupt)")
            return
        text = redact(self.n.scrub(str(exc)))
        self.n.send(f":x: {who} failed: {type(exc).__name__}" + (f": {text}" if text else ""))

    # -- per-host outcomes, for the failure rate of a quarantined host ------------------
    def set_hosts(self, hosts: Iterable[tuple]) -> None:
        """(host_id, host, ...) rows of the hosts table."""
        self._host_ids = {h[1]: h[0] for h in hosts}

    def committed(self, results: Iterable) -> None:
        """Writer callback after each commit (writer thread): tally outcomes per host."""
        for r in results:
            if r.status == "pending":
                continue
            t = self._host_tally.setdefault(r.item.host_id, [0, 0])
            t[r.status != "success"] += 1

    def quarantined(self, host: str, opens: int) -> None:
        if not self.enabled:
            return
        ok, bad = self._host_tally.get(self._host_ids.get(host, -1), (0, 0))
        rate = (f"; {bad:,} of its {ok + bad:,} images failed in this run "
                f"({100 * bad / (ok + bad):.0f}%)") if ok + bad else ""
        self.n.send(f":no_entry: host {host} quarantined: its circuit breaker opened {opens} "
                    f"times without a success{rate}. From the next run on it gets requests "
                    "only when no other host has work ready")

    def close(self, wait: float = FLUSH_WAIT) -> None:
        self.n.close(wait)


def label_for(db: os.PathLike | str) -> str:
    """Tells runs apart in a shared channel: machine and database file."""
    return f"{socket.gethostname()} {os.path.basename(os.fspath(db))}"


def main() -> int:
    """python -m download_db.notify: send one test message, to check the setup."""
    import sys

    from dotenv import find_dotenv, load_dotenv

    load_dotenv(find_dotenv(usecwd=True))  # the same .env the downloader reads
    prog = "python -m download_db.notify"
    try:
        url = check_url(os.environ.get(ENV_URL, ""))
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 64
    if not url:
        print(f"{prog}: error: no {ENV_URL} in .env or the environment", file=sys.stderr)
        return 1
    n = Notifier(url, socket.gethostname())
    n.send(":wave: test message from gbif-download-db: Slack notifications work")
    n.close(wait=2 * TIMEOUT + 1)
    if n.sent:
        print(f"{prog}: test message sent; look in the channel")
        return 0
    print(f"{prog}: error: the test message was not delivered (see the warning above)",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
