"""The fetch phase of a download process: worker threads, the writer, the main thread watching."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from .. import notify
from ..config import DownloadConfig
from ..db import claims
from ..db.meta import get_meta
from ..errors import DownloadDbError, NetworkDown, StorageError
from ..files import space, store
from ..identity.live import LivePlaceholders, RepeatWatch
from ..identity.placeholders import META_MAX_SHARED, load_blocklist
from ..progress import RunContext, fmt_secs
from ..states import (
    FAILED_PERMANENT,
    FAILED_TRANSIENT,
    PENDING,
    PLACEHOLDER_MAX_SHARED,
    SUCCESS,
    rescuable,
)
from ..web import fetch, gbif_cache
from ..web.politeness import HostGate
from .offline import OfflineDetector, host_of
from .scheduler import Scheduler
from .shared import SharedFetches
from .worker import Worker, WorkerConfig
from .writer import Writer

log = logging.getLogger(__name__)

TICK = 0.25  # seconds between the main thread's looks at the workers and the limits


@dataclass
class Run:
    """What the download stage hands the fetch phase, built once."""

    cfg: DownloadConfig
    ctx: RunContext  # output, bar or log lines, the log interval, the stop flag
    notes: notify.RunNotes
    gate: HostGate  # restored from the hosts table; closed at the end
    writer: Writer  # not started yet
    hosts: list[tuple[int, str, bool, int]]  # (host_id, host, quarantined, n_images), busiest first
    todo: int
    t0: float  # monotonic start of the run: --max-runtime and the rates count from it


@dataclass
class _Crew:
    """What the worker threads share, and what they hand back."""

    wcfg: WorkerConfig
    session: fetch.Session  # one pool per host bounds the open connections
    sched: Scheduler
    workers: list[Worker] = field(default_factory=list)
    # directories found missing: they cannot hold files of earlier runs to adopt
    new_dirs: set[str] = field(default_factory=set)
    fatal: list[BaseException] = field(default_factory=list)
    offline: OfflineDetector | None = None
    abort: DownloadDbError | None = None  # our state ended the run: offline, disk low


def fetch_all(run: Run) -> dict:
    """Fetch until the work, a limit or a stop ends it; returns the run's counts."""
    cfg, writer, stop = run.cfg, run.writer, run.ctx.stop
    # placeholders dedupe found before (in the main database) and the user's list
    blocked = load_blocklist(cfg.main_db or cfg.db, cfg.placeholder_hashes)
    if cfg.main_db is None:  # an array task sees a share of a host: finalize finds its ones
        most = int(get_meta(writer.conn, META_MAX_SHARED) or PLACEHOLDER_MAX_SHARED)
        writer.placeholders = LivePlaceholders(writer.conn, writer.root, blocked,
                                               cfg.max_attempts, RepeatWatch(most))
    writer.start()
    limits = fetch.Limits(cfg.connect_timeout, cfg.read_timeout, cfg.deadline, cfg.max_bytes,
                          user_agent=cfg.user_agent)
    # the rescue's queue: GBIF's image cache as one more host, its claims the rescue's
    rescue = [(claims.RESCUE_QUEUE, gbif_cache.host_of(cfg.gbif_cache_url), False)] \
        if cfg.rescue_from_gbif_cache else []
    crew = _Crew(WorkerConfig(writer.root, limits, cfg.max_size, cfg.jpeg_quality,
                              cfg.keep_original, cfg.max_pixels, blocklist=blocked,
                              shared=SharedFetches(), first_canvas_only=cfg.first_canvas_only,
                              gbif_cache=cfg.gbif_cache_url),
                 fetch.new_session(limits, pool_size=run.gate.most_at_once(),
                                   use_env=not cfg.no_proxy),
                 Scheduler(writer, run.gate, run.hosts + rescue,
                           per_host=cfg.per_host_concurrency,
                           stop=stop, max_items=cfg.max_images,
                           wait_for_retries=cfg.wait_for_retries),
                 offline=OfflineDetector(len(run.hosts)))
    writer.on_canvases = crew.sched.arrived
    threads = [threading.Thread(target=_work, args=(run, crew), name=f"worker-{i}", daemon=True)
               for i in range(cfg.threads)]
    for t in threads:
        t.start()
    limit_hit = _watch(run, crew, threads)
    if stop.is_set():
        fetch.abort_all()  # in-flight downloads end now, not at their deadline
    for t in threads:
        t.join(timeout=cfg.deadline + 5)
    writer.release(crew.sched.remaining())
    writer.stop()
    run.gate.close()
    if writer.error is not None:
        raise writer.error
    if crew.fatal:
        raise crew.fatal[0]
    counts = dict(writer.counts)
    counts["bytes_fetched"] = _bytes(crew)
    counts["requests"] = sum(w.requests for w in list(crew.workers))
    if limit_hit is None and cfg.max_images is not None \
            and crew.sched.handed_out >= cfg.max_images:
        limit_hit = "max_images"  # the last results were still on their way to the writer
    if limit_hit:
        counts["limit"] = limit_hit
    how = ("stopped" if crew.abort is not None else f"stopped at --{limit_hit.replace('_', '-')}"
           if limit_hit else "interrupted (resumable)" if stop.is_set() else "finished")
    run.ctx.say(summary(counts, time.monotonic() - run.t0, how))
    if crew.abort is not None:
        raise crew.abort
    return counts


def _work(run: Run, crew: _Crew) -> None:
    """One worker thread: take an item from the scheduler, process it, hand the result on."""
    w = Worker(crew.wcfg, run.gate, run.writer, run.ctx.stop, crew.session,
               on_release=crew.sched.slot_released, new_dirs=crew.new_dirs,
               offline=crew.offline)
    crew.workers.append(w)
    while True:
        got = crew.sched.next()
        if got is None:
            return
        item, slot = got
        retry_at = None
        try:
            result = w.process(item, slot)
        except store.StoreError as e:
            crew.fatal.append(e)
            run.ctx.stop.set()
            result = claims.Result(item, PENDING, attempted=False)
        except Exception as e:  # noqa: BLE001 - a bug must not kill the run or lose the claim
            log.exception("unexpected error on image %s", item.image_id)
            result = claims.Result(item, FAILED_TRANSIENT, error_type="other",
                                   error_detail=f"{type(e).__name__}: {e}")
        if result.status in (PENDING, FAILED_TRANSIENT):
            retry_at = result.retry_at or time.time()
        if result.extra.get("canvases"):
            crew.sched.expect()  # before done(): the run must not end before their rows
        run.writer.put(result)
        crew.sched.done(item, retry_at)
        if run.cfg.rescue_from_gbif_cache and not item.rescue \
                and rescuable(result.status, result.error_type):
            crew.sched.wake(claims.RESCUE_QUEUE)  # failed just now: the cache may have it


def _watch(run: Run, crew: _Crew, threads: list[threading.Thread]) -> str | None:
    """Main thread: progress, limits, writer health; returns which limit ended the run."""
    cfg, writer, stop = run.cfg, run.writer, run.ctx.stop
    # the position is the images saved: the ETA says when the work is saved, and a run
    # whose every attempt fails shows no ETA at all
    progress = run.ctx.progress("download", run.todo, item="img", counting=True,
                                word="saved")
    outage = _Outage(run, crew)
    checked_at = 0
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(TICK)
            counts = dict(writer.counts)  # a copy: the writer thread adds keys
            if run.notes.leader:
                run.notes.tick(counts)
            done = _done(counts)
            if done - checked_at >= space.CHECK_EVERY:
                checked_at = done
                low = space.low_space(places(cfg, writer.root), cfg.min_free)
                if low is not None:
                    crew.abort = StorageError(low)
            if crew.abort is None:
                crew.abort = outage.tick(time.monotonic())
            if crew.abort is not None:
                stop.set()
                return None
            saved = counts.get(SUCCESS, 0)
            progress.update(saved, saved - progress.done_bytes,
                            rates(counts, _bytes(crew), time.monotonic() - run.t0))
            if writer.error is not None:
                stop.set()
            if cfg.max_runtime is not None and time.monotonic() - run.t0 >= cfg.max_runtime:
                stop.set()
                return "max_runtime"
            if stop.is_set():
                return None
        limited = cfg.max_images is not None and _done(writer.counts) >= cfg.max_images
        return "max_images" if limited else None
    finally:
        progress.close()


def places(cfg: DownloadConfig, root) -> dict:
    """Where free space is kept: the image root, and the database's directory."""
    return {"under the image root": root, "beside the database": cfg.db.resolve().parent}


class _Outage:
    """The main thread's side of an offline node: pause the workers and give their
    claims back, probe now and then, resume on an answer, give up after
    --offline-timeout."""

    def __init__(self, run: Run, crew: _Crew) -> None:
        self.run, self.crew = run, crew
        self.since: float | None = None
        self.next_probe = 0.0
        self.busiest = [h[1] for h in run.hosts]

    def tick(self, now: float) -> DownloadDbError | None:
        det, cfg, sched = self.crew.offline, self.run.cfg, self.crew.sched
        if det is None or (self.since is None and not det.offline):
            return None
        if self.since is None:
            self.since, self.next_probe = now, now + cfg.offline_probe_every
            sched.hold.set()  # workers finish what they hold; in-flight failures are ours
            self.run.writer.release(sched.remaining())
            hosts = det.failing_hosts()
            self._tell(f":electric_plug: network looks down: requests to {len(hosts)} "
                       f"hosts ({', '.join(hosts[:5])}) reached no server; paused (no attempt "
                       f"spent), probing every {fmt_secs(cfg.offline_probe_every)}, giving up "
                       f"after --offline-timeout {fmt_secs(cfg.offline_timeout)}")
            return None
        if now >= self.next_probe:
            timeout = min(cfg.connect_timeout, 5.0)
            urls = det.probe_urls(self.busiest)[:10]
            answered = {host_of(u) for u in urls
                        if fetch.answers(self.crew.session, u, timeout)}
            if answered:
                dead = det.back_online(answered)
                sched.resume()
                gone = f"; still unreachable, counted as their own failures: " \
                       f"{', '.join(dead[:5])}" if dead else ""
                self._tell(f":electric_plug: network back after {fmt_secs(now - self.since)}; "
                           f"resuming{gone}")
                self.since = None
                return None
            self.next_probe = time.monotonic() + cfg.offline_probe_every
        if now - self.since >= cfg.offline_timeout:
            return NetworkDown(f"the network has been down for {fmt_secs(now - self.since)} "
                               f"(--offline-timeout {fmt_secs(cfg.offline_timeout)}): no "
                               "server answered a probe; nothing was spent on the images. "
                               "Run the same command on a node with network")
        return None

    def _tell(self, text: str) -> None:
        self.run.ctx.say("download: " + text.split(": ", 1)[1])
        self.run.notes.notice(text)


def _done(counts: dict) -> int:
    return sum(counts.get(k, 0) for k in (SUCCESS, FAILED_TRANSIENT, FAILED_PERMANENT))


def _bytes(crew: _Crew) -> int:
    return sum(w.bytes for w in list(crew.workers))


def rates(counts: dict, fetched: int, seconds: float) -> str:
    """The download's figures for its progress line."""
    dt = max(seconds, 1e-9)
    ok = counts.get(SUCCESS, 0)
    bad = counts.get(FAILED_TRANSIENT, 0) + counts.get(FAILED_PERMANENT, 0)
    return (f"{ok:,} ok, {bad:,} failed, {counts.get('deferred', 0):,} deferred, "
            f"{ok / dt:,.1f} img/s, {fetched / 1e6 / dt:,.1f} MB/s")


def summary(counts: dict, seconds: float, how: str = "finished") -> str:
    """The line a download process ends with: how it ended ("finished", "interrupted
    (resumable)", "stopped at --max-runtime"), and a warning when nothing was saved
    although every attempt failed: then the network or the hosts look down."""
    failed = counts.get(FAILED_TRANSIENT, 0) + counts.get(FAILED_PERMANENT, 0)
    warn = (f" - NOTHING SAVED: all {failed:,} attempts failed; the network or the hosts "
            "look down (see the report's failures by type)"
            if failed and not counts.get(SUCCESS, 0) else "")
    rescued = counts.get("from_gbif_cache", 0)
    missing = counts.get("not_in_gbif_cache", 0)
    cache = (f" ({rescued:,} of them from GBIF's image cache, which had no copy of "
             f"{missing:,} more)" if rescued or missing else "")
    return (f"download: {how} after {fmt_secs(seconds)}{warn}: "
            f"{counts.get(SUCCESS, 0):,} saved{cache}, "
            f"{counts.get(FAILED_TRANSIENT, 0):,} failed (will retry), "
            f"{counts.get(FAILED_PERMANENT, 0):,} failed permanently, "
            f"{counts.get('deferred', 0):,} deferred (host cooling down / busy), "
            f"{counts.get('bytes_fetched', 0) / 1e6:,.1f} MB fetched"
            + (f", {counts['canvases']:,} images of other IIIF canvases added"
               if counts.get("canvases") else "")
            + (f", {counts['canvases_queued']:,} other IIIF canvases queued for the merge"
               if counts.get("canvases_queued") else ""))
