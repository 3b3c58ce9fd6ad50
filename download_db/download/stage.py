"""The download stage: recover, then fetch on worker threads until done, a limit, or a stop."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from .. import notify
from ..arrays import task
from ..arrays.merge import merge_tasks
from ..config import DownloadConfig
from ..db import claims, runs, tallies
from ..db import hosts as host_table
from ..db.connection import connect, interruptible, open_readonly, transaction, was_interrupted
from ..db.meta import get_meta
from ..db.schema import migrate
from ..db.sqlite import sqlite3
from ..db.stagelock import stage_lock
from ..errors import DatabaseError, PrerequisiteFailed, StorageError, UsageError
from ..files import space
from ..progress import RunContext
from ..signals import stop_on_signals
from ..web import gbif_cache, proxies
from ..web import policy as host_policy
from ..web.politeness import HostGate, Politeness, default_lock_dir
from .recovery import recover
from .run import Run, fetch_all, places
from .writer import Writer


def run_download(cfg: DownloadConfig, out: TextIO | None = None) -> dict:
    """One image_install_db.py process (or a parent of --processes children)."""
    cfg.validate()
    shard = task.shard_of(cfg)
    if shard is not None and cfg.rescue_from_gbif_cache:
        raise UsageError("--rescue-from-gbif-cache is not for array tasks (GBIF asks for a "
                         "single connection, and a task holds only work left): run it once "
                         "after the array, with --shard none")
    if shard is not None:  # an array task works on its own database from here on
        cfg = task.prepare(cfg, shard, out)
    notes = notify.RunNotes(notify.Notifier(cfg.slack_webhook_url, notify.label_for(cfg.db)),
                            every=cfg.notify_every, stall_minutes=cfg.stall_minutes,
                            child=notify.is_child())
    own: dict = {}
    try:
        shares = _split(cfg.max_images, cfg.processes)
        since = time.time()
        children = _spawn_children(cfg, shares[1:]) if cfg.processes > 1 else []
        if children and notes.leader:
            notes.others = _others_counts(cfg.db, [p.pid for p in children], since)
        with stage_lock(cfg.db, exclusive=False, what="image_install_db.py"), \
                stop_on_signals() as stop:
            try:
                own = _download(replace(cfg, max_images=shares[0]), stop, out, notes)
            finally:
                _wait_children(children, stop, lambda: notes.tick(own))
        limit = own.get("limit")
        notes.finish(own, f"stopped at --{limit.replace('_', '-')}" if limit else
                     "stopped by a signal" if stop.is_set() else "finished")
        return own
    except BaseException as e:
        notes.crash(e)
        raise
    finally:
        notes.close()


def _split(total: int | None, parts: int) -> list[int | None]:
    """--max-images shared out over the processes (None: no limit)."""
    if total is None:
        return [None] * parts
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


def _wait_children(children: list[subprocess.Popen], stop: threading.Event,
                   tick: Callable[[], None] = lambda: None) -> None:
    """Wait for the other processes, passing a stop signal on whenever it comes."""
    told = False
    while any(p.poll() is None for p in children):
        tick()
        if stop.is_set() and not told:
            for p in children:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            told = True
        time.sleep(0.2)


def _spawn_children(cfg: DownloadConfig, shares: list[int | None]) -> list[subprocess.Popen]:
    """--processes N: N-1 more copies of this run, each its own claimer and writer on the
    same database (same machine, so WAL is safe), each handed this config with its share
    of --max-images."""
    from . import child

    env = {**os.environ, notify.ENV_CHILD: "1"}  # the first process speaks for all on Slack
    return [child.start(replace(cfg, processes=1, bar=False, max_images=share), env)
            for share in shares]


def _open(cfg: DownloadConfig) -> sqlite3.Connection:
    if not cfg.db.exists():
        raise DatabaseError(f"database not found: {cfg.db} (build it first with "
                            "init_download_db.py --multimedia multimedia.txt)")
    try:
        conn = connect(cfg.db, wal=cfg.wal)
        migrate(conn)
        done = get_meta(conn, "ingest_phase") == "done"
    except sqlite3.DatabaseError as e:
        raise DatabaseError(f"cannot open {cfg.db} as a download database: {e}") from None
    if not done:  # its prerequisite, the ingest, failed or is unfinished: say so in runs
        try:
            last = runs.last_run(conn, "ingest")
            why = f"the build of {cfg.db} has not finished" + (
                f" (last {runs.describe('ingest', last)})" if last else "")
            runs.record_not_run(conn, "download", why)
        finally:
            conn.close()
        raise PrerequisiteFailed(f"download not run: {why}; run init_download_db.py again to "
                                 "complete it")
    return conn


def _download(cfg: DownloadConfig, stop: threading.Event, out: TextIO | None,
              notes: notify.RunNotes) -> dict:
    t0 = time.monotonic()
    ctx = RunContext(out=out, bar=cfg.bar, every=cfg.progress_every, stop=stop)
    root = cfg.install_path.resolve()
    space.prepare_root(root)
    low = space.low_space(places(cfg, root), cfg.min_free)  # before the first write
    if low is not None:
        raise StorageError(low)
    conn = _open(cfg)
    try:
        if cfg.main_db is None:  # the main DB: fold finished array tasks in first
            with interruptible(conn, stop.is_set):
                mst = merge_tasks(conn, cfg.db, force=cfg.force, out=out, stop=stop.is_set)
            if mst.tasks:
                ctx.say(f"download: merged {mst.tasks} array task databases "
                        f"({mst.images:,} image results) first")
            if mst.verify.applied:
                ctx.say(f"download: applied {mst.verify.applied:,} verify verdicts first "
                        f"({sum(mst.verify.requeued.values()):,} files requeued)")
    except sqlite3.OperationalError as e:
        conn.close()
        if not was_interrupted(e):
            raise
        ctx.say("download: stopped by a signal while merging array tasks; nothing was claimed")
        return {}
    run_id = runs.start_run(conn, "download")
    counts: dict = {}
    try:
        try:
            with interruptible(conn, stop.is_set):
                todo = _start_up(conn, cfg, root, ctx)
        except sqlite3.OperationalError as e:
            if not was_interrupted(e):
                raise
            ctx.say("download: stopped by a signal during start-up; nothing was claimed")
            runs.finish_run(conn, run_id, runs.INTERRUPTED, counts, "stopped by a signal")
            conn.close()
            return counts
        hosts = host_table.with_images(conn)
        ctx.say(f"download: {todo:,} images with work left on {len(hosts):,} hosts -> {root}")
        if cfg.rescue_from_gbif_cache:
            n = claims.count_rescue(conn)
            todo += n
            ctx.say(f"download: rescue from GBIF's image cache: {n:,} permanent failures to "
                    f"try at {cfg.gbif_cache_url}")
        ctx.say(_proxy_line(cfg.no_proxy))
        notes.set_hosts(hosts)
        notes.start(todo, len(hosts), cfg.processes)
        writer = Writer(conn, token=claims.make_token(run_id), run_id=run_id, root=root,
                        max_attempts=cfg.max_attempts, lease=cfg.lease,
                        on_commit=notes.committed if notes.enabled else None,
                        queue_canvases=cfg.main_db is not None)
        counts = fetch_all(Run(cfg, ctx, notes, _gate(cfg, conn, notes), writer, hosts, todo,
                               t0))
    except BaseException as e:
        runs.finish_run(conn, run_id, runs.FAILED, counts, f"{type(e).__name__}: {e}"[:500])
        raise
    outcome = runs.INTERRUPTED if stop.is_set() and not counts.get("limit") else runs.OK
    counts["seconds"] = round(time.monotonic() - t0, 1)
    runs.finish_run(conn, run_id, outcome, counts,
                    "stopped by a signal" if outcome == runs.INTERRUPTED else None)
    conn.close()
    return counts


def _start_up(conn: sqlite3.Connection, cfg: DownloadConfig, root: Path,
              ctx: RunContext) -> int:
    """Recover dead runs' leftovers and re-park retries for this budget; returns the
    images with work left. Each step costs what it finds (the claimed-rows index,
    the counters), not the size of the work list."""
    rec = recover(conn, root, cfg.lease, cfg.keep_original, cfg.max_attempts)
    with transaction(conn):
        reopened = claims.reopen_exhausted(conn, cfg.max_attempts)
        parked = claims.park_exhausted(conn, cfg.max_attempts)
    if rec["claims"] or reopened or parked:
        ctx.say(f"download: recovered {rec['claims']:,} claims of dead runs "
                f"({rec['renamed']:,} files finished, {rec['adopted']:,} downloads "
                f"adopted, {rec['lost']:,} lost, {rec['temps']:,} temp files removed); "
                f"{reopened:,} retries re-opened, {parked:,} parked")
    return tallies.work_left(conn)


def _proxy_line(no_proxy: bool) -> str:
    via = proxies.describe_proxies()
    if no_proxy:
        return "download: direct connections (--no-proxy)" + (
            "; ignoring the environment's proxies" if via else "")
    return f"download: proxy: {via}" if via else "download: direct connections (no proxy set)"


def _gate(cfg: DownloadConfig, conn: sqlite3.Connection, notes: notify.RunNotes) -> HostGate:
    """The per-host gate, its shared state seeded from the hosts table; it tells
    Slack itself when it quarantines a host."""
    policy = Politeness(concurrency=cfg.per_host_concurrency, rate=cfg.per_host_rate)
    # GBIF's image cache at another address keeps GBIF's limits (one connection)
    same = {gbif_cache.host_of(cfg.gbif_cache_url): gbif_cache.HOST} \
        if cfg.rescue_from_gbif_cache else {}
    hosts = host_policy.load(cfg.host_policy, host_policy.ADAPTIVE_DEFAULT if cfg.adaptive
                             else host_policy.HostLimits(cfg.per_host_concurrency,
                                                         cfg.per_host_rate), same)
    gate = HostGate(cfg.lock_dir or default_lock_dir(cfg.db), policy,
                    split={h: (j, k) for h, j, k in cfg.split},
                    on_quarantine=notes.quarantined if notes.enabled else None, hosts=hosts)
    now = time.time()
    for host, cooldown, opened in host_table.blocked(conn, now):
        gate.restore(host, cooldown if cooldown and cooldown > now else None,
                     opened + policy.open_seconds if opened else None)
    return gate


def _others_counts(db: Path, pids: list[int], since: float) -> Callable[..., dict]:
    """The summed counts of the --processes copies, read from their runs rows
    (at most every 5 s unless fresh), so the first process reports for all."""
    cache: dict = {}
    read_at = -1e9

    def others(fresh: bool = False) -> dict:
        nonlocal cache, read_at
        if not fresh and time.monotonic() - read_at < 5:
            return cache
        read_at = time.monotonic()
        try:
            conn = open_readonly(db, busy_timeout_s=1.0)
            try:
                cache = notify.add_counts(*runs.download_counts(conn, pids, since))
            finally:
                conn.close()
        except (sqlite3.Error, ValueError):
            pass  # a busy database only delays the numbers
        return cache

    return others
