"""The download stage: recover, then fetch on worker threads until done, a limit, or a stop."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from .. import notify
from ..arrays import task
from ..arrays.merge import merge_tasks
from ..config import DownloadConfig
from ..db import claims, runs
from ..db.connection import connect, transaction
from ..db.meta import get_meta
from ..db.schema import migrate
from ..db.sqlite import sqlite3
from ..db.stagelock import stage_lock
from ..errors import DatabaseError
from ..files import store
from ..progress import fmt_secs, say
from ..signals import stop_on_signals
from ..states import EXHAUSTED_WHERE
from ..web import fetch
from ..web.politeness import HostGate, Politeness, default_lock_dir
from .recovery import recover
from .scheduler import Scheduler
from .worker import Worker, WorkerConfig
from .writer import Writer

log = logging.getLogger(__name__)


def run_download(cfg: DownloadConfig, out: TextIO | None = None) -> dict:
    """One image_install_db.py process (or a parent of --processes children)."""
    cfg.validate()
    shard = task.shard_of(cfg)
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
            notes.others = notify.others_counts(cfg.db, [p.pid for p in children], since)
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
    """--processes N: N-1 more copies of this command, each its own claimer
    and writer on the same database (same machine, so WAL is safe)."""
    argv = _without(sys.argv[1:], ("--processes", "--max-images"))
    script = sys.argv[0] if sys.argv[0].endswith(".py") else "-m download_db.download.child"
    cmd = [sys.executable, *script.split(), *argv, "--no-bar", "--processes", "1"]
    env = {**os.environ, notify.ENV_CHILD: "1"}  # the first process speaks for all on Slack
    return [subprocess.Popen(cmd + ([] if share is None else ["--max-images", str(share)]),
                             env=env) for share in shares]


def _without(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """argv minus the given valued flags (both "--flag V" and "--flag=V")."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        elif not a.startswith(tuple(f + "=" for f in flags)):
            out.append(a)
    return out


def _open(cfg: DownloadConfig) -> sqlite3.Connection:
    if not cfg.db.exists():
        raise DatabaseError(f"database not found: {cfg.db} (build it first with "
                            "init_download_db.py --multimedia multimedia.txt)")
    try:
        conn = connect(cfg.db, wal=cfg.wal)
        migrate(conn)
        if get_meta(conn, "ingest_phase") != "done":
            raise DatabaseError(f"the build of {cfg.db} has not finished; run "
                                "init_download_db.py again to complete it")
    except sqlite3.DatabaseError as e:
        raise DatabaseError(f"cannot open {cfg.db} as a download database: {e}") from None
    return conn


def _download(cfg: DownloadConfig, stop: threading.Event, out: TextIO | None,
              notes: notify.RunNotes) -> dict:
    t0 = time.monotonic()
    root = cfg.install_path.resolve()
    conn = _open(cfg)
    if cfg.main_db is None:  # the main DB: fold finished array tasks in first
        mst = merge_tasks(conn, cfg.db, force=cfg.force, out=out)
        if mst.tasks:
            say(f"download: merged {mst.tasks} array task databases "
                f"({mst.images:,} image results) first", out)
    run_id = runs.start_run(conn, "download")
    token = claims.make_token(run_id)
    counts: dict = {}
    try:
        root.mkdir(parents=True, exist_ok=True)
        rec = recover(conn, root, cfg.lease, cfg.keep_original, cfg.max_attempts)
        with transaction(conn):
            reopened = claims.reopen_exhausted(conn, cfg.max_attempts)
            parked = claims.park_exhausted(conn, cfg.max_attempts)
        if rec["claims"] or reopened or parked:
            say(f"download: recovered {rec['claims']:,} claims of dead runs "
                f"({rec['renamed']:,} files finished, {rec['adopted']:,} downloads adopted, "
                f"{rec['lost']:,} lost, {rec['temps']:,} temp files removed); "
                f"{reopened:,} retries re-opened, {parked:,} parked", out)
        todo = conn.execute(f"SELECT count(*) FROM images INDEXED BY images_todo WHERE "
                            f"{EXHAUSTED_WHERE}").fetchone()[0]
        hosts = conn.execute("SELECT host_id, host, quarantined FROM hosts "
                             "WHERE n_images > 0 ORDER BY n_images DESC").fetchall()
        say(f"download: {todo:,} images with work left on {len(hosts):,} hosts -> {root}", out)
        notes.set_hosts(hosts)
        notes.start(todo, len(hosts), cfg.processes)
        counts = _fetch_all(cfg, conn, run_id, token, root, hosts, todo, stop, out, t0, notes)
    except BaseException as e:
        runs.finish_run(conn, run_id, runs.FAILED, counts, f"{type(e).__name__}: {e}"[:500])
        raise
    outcome = runs.INTERRUPTED if stop.is_set() and not counts.get("limit") else runs.OK
    counts["seconds"] = round(time.monotonic() - t0, 1)
    runs.finish_run(conn, run_id, outcome, counts,
                    "stopped by a signal" if outcome == runs.INTERRUPTED else None)
    conn.close()
    return counts


def _fetch_all(cfg: DownloadConfig, conn: sqlite3.Connection, run_id: int, token: str,
               root: Path, hosts: list, todo: int, stop: threading.Event,
               out: TextIO | None, t0: float, notes: notify.RunNotes) -> dict:
    policy = Politeness(concurrency=cfg.per_host_concurrency, rate=cfg.per_host_rate)
    gate = HostGate(cfg.lock_dir or default_lock_dir(cfg.db), policy,
                    split={h: (j, k) for h, j, k in cfg.split})
    now = time.time()
    for host, cooldown, opened in conn.execute(
            "SELECT host, cooldown_until, CASE WHEN breaker_state = 'open' "
            "THEN breaker_opened_at END FROM hosts WHERE cooldown_until > ? OR "
            "breaker_state = 'open'", (now,)):
        gate.restore(host, cooldown if cooldown and cooldown > now else None,
                     opened + policy.open_seconds if opened else None)
    writer = Writer(conn, token=token, run_id=run_id, root=root, max_attempts=cfg.max_attempts,
                    lease=cfg.lease, on_commit=notes.committed if notes.enabled else None,
                    on_host_state=_quarantine_reporter(gate, notes) if notes.enabled else None)
    writer.start()
    sched = Scheduler(writer, gate, hosts, per_host=cfg.per_host_concurrency, stop=stop,
                      max_items=cfg.max_images, wait_for_retries=cfg.wait_for_retries)
    limits = fetch.Limits(cfg.connect_timeout, cfg.read_timeout, cfg.deadline, cfg.max_bytes,
                          user_agent=cfg.user_agent)
    wcfg = WorkerConfig(root, limits, cfg.max_size, cfg.jpeg_quality, cfg.keep_original,
                        cfg.max_pixels)
    session = fetch.new_session(limits, pool_size=cfg.per_host_concurrency)
    new_dirs: set[int] = set()
    fatal: list[BaseException] = []
    workers: list[Worker] = []

    def loop() -> None:
        w = Worker(wcfg, gate, writer, stop, session, on_release=sched.slot_released,
                   new_dirs=new_dirs)
        workers.append(w)
        while True:
            got = sched.next()
            if got is None:
                return
            item, slot = got
            retry_at = None
            try:
                result = w.process(item, slot)
            except store.StoreError as e:
                fatal.append(e)
                stop.set()
                result = claims.Result(item, "pending", attempted=False)
            except Exception as e:  # noqa: BLE001 - a bug must not kill the run or lose the claim
                log.exception("unexpected error on image %s", item.image_id)
                result = claims.Result(item, "failed_transient", error_type="other",
                                       error_detail=f"{type(e).__name__}: {e}")
            if result.status in ("pending", "failed_transient"):
                retry_at = result.retry_at or time.time()
            writer.put(result)
            sched.done(item, retry_at)

    threads = [threading.Thread(target=loop, name=f"worker-{i}", daemon=True)
               for i in range(cfg.threads)]
    for t in threads:
        t.start()
    limit_hit = _watch(cfg, threads, writer, workers, stop, todo, out, t0, notes)
    if stop.is_set():
        fetch.abort_all()  # in-flight downloads end now, not at their deadline
    for t in threads:
        t.join(timeout=cfg.deadline + 5)
    writer.release(sched.remaining())
    writer.stop()
    gate.close()
    if writer.error is not None:
        raise writer.error
    if fatal:
        raise fatal[0]
    counts = dict(writer.counts)
    counts["bytes_fetched"] = sum(w.bytes for w in workers)
    if limit_hit:
        counts["limit"] = limit_hit
    _summary(counts, out, time.monotonic() - t0)
    return counts


def _quarantine_reporter(gate: HostGate, notes: notify.RunNotes) -> Callable[[str, dict], None]:
    """Writer.host_state hook: tell Slack when a host gets quarantined."""
    def on_host_state(host: str, fields: dict) -> None:
        # Every failed probe after the quarantine says "quarantine" again, in any
        # process: report only the one that reaches the threshold.
        if fields.get("quarantined") == 1:
            opens = int(gate.state(host)["opens"])
            if opens == gate.policy.quarantine_after:
                notes.quarantined(host, opens)

    return on_host_state


def _watch(cfg: DownloadConfig, threads: list[threading.Thread], writer: Writer,
           workers: list[Worker], stop: threading.Event, todo: int, out: TextIO | None,
           t0: float, notes: notify.RunNotes) -> str | None:
    """Main thread: progress, limits, writer health; returns which limit ended the run."""
    stream = out or sys.stdout
    bar = tqdm(total=todo, unit="img", desc="download", file=stream, dynamic_ncols=True) \
        if (cfg.bar if cfg.bar is not None else stream.isatty()) else None
    last_log = time.monotonic()
    shown = done = 0
    limit = None
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(0.25)
            done = sum(writer.counts.get(k, 0) for k in
                       ("success", "failed_transient", "failed_permanent"))
            if notes.leader:
                notes.tick(dict(writer.counts))  # a copy: the writer thread adds keys
            if bar is not None:
                bar.update(done - shown)
                shown = done
                bar.set_postfix_str(_rates(writer.counts, workers, t0), refresh=False)
            elif time.monotonic() - last_log >= cfg.progress_every:
                last_log = time.monotonic()
                eta = ""
                rate = done / max(time.monotonic() - t0, 1e-9)
                if rate > 0 and todo > done:
                    eta = f", ETA {fmt_secs((todo - done) / rate)}"
                say(f"download: {done:,}/{todo:,} done; {_rates(writer.counts, workers, t0)}{eta}",
                    stream)
            if writer.error is not None:
                stop.set()
            if cfg.max_runtime is not None and time.monotonic() - t0 >= cfg.max_runtime:
                limit = "max_runtime"
                stop.set()
            if stop.is_set():
                return limit
        done = sum(writer.counts.get(k, 0) for k in
                   ("success", "failed_transient", "failed_permanent"))
        return "max_images" if cfg.max_images is not None and done >= cfg.max_images else None
    finally:
        if bar is not None:
            bar.close()


def _rates(counts: dict, workers: list[Worker], t0: float) -> str:
    dt = max(time.monotonic() - t0, 1e-9)
    ok = counts.get("success", 0)
    bad = counts.get("failed_transient", 0) + counts.get("failed_permanent", 0)
    mb = sum(w.bytes for w in workers) / 1e6
    return (f"{ok:,} ok, {bad:,} failed, {counts.get('deferred', 0):,} deferred, "
            f"{ok / dt:,.1f} img/s, {mb / dt:,.1f} MB/s")


def _summary(counts: dict, out: TextIO | None, seconds: float) -> None:
    say(f"download: finished in {fmt_secs(seconds)}: {counts.get('success', 0):,} saved, "
        f"{counts.get('failed_transient', 0):,} failed (will retry), "
        f"{counts.get('failed_permanent', 0):,} failed permanently, "
        f"{counts.get('deferred', 0):,} deferred (host cooling down / busy), "
        f"{counts.get('bytes_fetched', 0) / 1e6:,.1f} MB fetched", out)
