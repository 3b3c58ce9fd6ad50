"""A verify array task: check its share of the frozen database's files, verdicts to its own DB."""

from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TextIO

from ..arrays.plan import TASK_JOURNAL, Shard, open_frozen, tasks_dir_for
from ..arrays.verdicts import refuse_other_counts, verdicts_path
from ..db import runs, upkeep, verdicts
from ..db.connection import connect, remove_database, transaction
from ..db.meta import get_meta, set_meta
from ..db.sqlite import sqlite3
from ..db.stagelock import stage_lock
from ..errors import DatabaseError, UsageError
from ..progress import RunContext
from ..signals import stop_on_signals
from .throttle import Throttle
from .verify import VerifyConfig, VerifyStats, check_all, checks, end_run, sound_bytes

# Verdicts are committed at least this often (seconds), even inside a batch: each
# commit is the task's heartbeat (a merge takes a task silent for ALIVE_WINDOW as
# dead) and what a kill loses. Files are checked CHUNK at a time between the checks.
COMMIT_EVERY = 60.0
CHUNK = 256


def run_verify_task(cfg: VerifyConfig, shard: Shard, out: TextIO | None = None) -> VerifyStats:
    """Task K of N: its share (image_id modulo N) of the saved images, read from the
    frozen main database without writing it; each file's verdict goes to
    <db>.tasks/verify-K-of-N.db, which `gbif-download-db merge` applies. Resumable
    (the walk's position is in that database), same checks and throttle as a local
    verify; the pass's cut-off is fixed at the task's first start."""
    if cfg.revisit_days is not None:
        raise UsageError("--revisit-failed-older-than writes the main database, which an "
                         "array task only reads; run it outside the array (--shard none)")
    main = open_frozen(cfg.db)
    try:
        if "last_checked" not in {r[1] for r in main.execute("PRAGMA table_info(images)")}:
            raise DatabaseError(f"{cfg.db} predates verify; run `gbif-download-db merge` on "
                                "one machine first (it upgrades and freezes the database)")
        tasks_dir = tasks_dir_for(cfg.db)
        refuse_other_counts(tasks_dir, shard)
        path = verdicts_path(tasks_dir, shard)
        tasks_dir.mkdir(parents=True, exist_ok=True)
        with stage_lock(path, exclusive=True, what=f"verify task {shard}"), \
                stop_on_signals() as stop:
            ctx = RunContext(out=out, bar=cfg.bar, every=cfg.progress_every, stop=stop)
            conn = _open(path, cfg, shard, main, ctx)
            try:
                return _run(main, conn, cfg, shard, path, ctx)
            finally:
                conn.close()
    finally:
        main.close()


def _open(path: Path, cfg: VerifyConfig, shard: Shard, main: sqlite3.Connection,
          ctx: RunContext) -> sqlite3.Connection:
    """The task's verdicts database: made on its first start (under a temporary name,
    so a kill leaves none half made), reused when the task runs again."""
    build = get_meta(main, "build_id") or ""
    if not path.exists():
        now = time.time()
        tmp = path.with_name(path.name + ".building")
        remove_database(tmp)
        conn = connect(tmp, wal=False)
        with transaction(conn):
            verdicts.create(conn, {
                "verdicts_id": uuid.uuid4().hex, "task_shard": str(shard),
                "task_main_db": str(cfg.db.resolve()), "build_id": build,
                "task_epoch": get_meta(main, "array_epoch") or "",
                "install_path": str(cfg.install_path.resolve()),
                "cutoff": repr(now - cfg.older_than_days * 86400)})
        conn.execute(f"PRAGMA journal_mode = {TASK_JOURNAL}")
        conn.close()
        os.replace(tmp, path)
        ctx.say(f"verify task {shard}: verdicts -> {path}")
    else:
        ctx.say(f"verify task {shard}: resuming with {path}")
    try:
        conn = connect(path, wal=False)
        have = get_meta(conn, "task_shard")
    except sqlite3.Error as e:
        raise DatabaseError(f"cannot open verify task database {path}: {e}") from None
    if have != str(shard):
        conn.close()
        raise UsageError(f"{path} is for verify task {have}, not {shard}")
    if (get_meta(conn, "build_id") or "") != build:
        conn.close()
        raise DatabaseError(f"{path} comes from another build of {cfg.db} (it was rebuilt "
                            "with --reset): delete it")
    return conn


def _run(main: sqlite3.Connection, conn: sqlite3.Connection, cfg: VerifyConfig, shard: Shard,
         path: Path, ctx: RunContext) -> VerifyStats:
    t0 = time.monotonic()
    st = VerifyStats()
    if get_meta(conn, "pass_done") == "1":
        ctx.say(f"verify task {shard}: its pass is complete ({verdicts.count(conn):,} "
                "verdicts); `gbif-download-db merge` applies them, then a new pass can start")
        return st
    cutoff = float(get_meta(conn, "cutoff") or time.time())
    pos = verdicts.position(conn)
    saved = upkeep.count_saved(main)
    ctx.say(f"verify task {shard}: its share of {saved:,} saved files under "
            f"{cfg.install_path} ({checks(cfg)}), "
            + ("from the start" if pos is None else f"{verdicts.count(conn):,} checked before"))
    total = -(-saved // shard.count)
    progress = ctx.progress("verify", min(total, cfg.limit) if cfg.limit else total,
                            item="files", counting=True)
    throttle = Throttle(cfg.max_mb_per_s * 1e6)
    pool = ThreadPoolExecutor(cfg.threads) if cfg.threads > 1 else None
    run_id = runs.start_run(conn, "verify")
    try:
        while cfg.limit is None or st.checked < cfg.limit:
            if cfg.max_runtime is not None and time.monotonic() - t0 >= cfg.max_runtime:
                ctx.say(f"verify task {shard}: --max-runtime reached; run it again to continue")
                break
            n = cfg.batch if cfg.limit is None else min(cfg.batch, cfg.limit - st.checked)
            rows = upkeep.to_check(
                main, cutoff, n, after=pos[1] if pos and pos[0] is None else -1,
                shard=(shard.index, shard.count),
                older_after=(pos[0], pos[1]) if pos and pos[0] is not None else None)
            if not rows:
                with transaction(conn):
                    set_meta(conn, "pass_done", "1")
                break
            pos = _check_batch(conn, cfg, run_id, rows, throttle, pool, st, ctx)
            progress.update(st.checked, len(rows))
    except runs.ENDING_ERRORS as e:
        st.seconds = time.monotonic() - t0
        runs.end_on_error(conn, run_id, st.as_dict(), e)
    finally:
        progress.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    bad = end_run(conn, run_id, st, throttle, t0)
    ctx.say(f"verify task {shard}: {st.checked:,} files checked, {st.sound:,} sound, "
            f"unsound: {bad}; {st.bytes_read / 1e6:,.1f} MB read in {st.seconds:.1f}s; "
            f"`gbif-download-db merge` applies the verdicts in {path.name}")
    return st


def _check_batch(conn: sqlite3.Connection, cfg: VerifyConfig, run_id: int,
                 rows: list[upkeep.Saved], throttle: Throttle, pool: ThreadPoolExecutor | None,
                 st: VerifyStats, ctx: RunContext) -> verdicts.Position:
    """Check a batch CHUNK files at a time; commit the verdicts (with the walk's
    position) every COMMIT_EVERY seconds and at the end. Returns the new position."""
    todo: list[tuple[upkeep.Saved, tuple[str, str, int] | None]] = []
    last = time.monotonic()
    pos: verdicts.Position = (None, -1)
    for i in range(0, len(rows), CHUNK):
        chunk = rows[i:i + CHUNK]
        todo += zip(chunk, check_all(cfg, chunk, throttle, pool), strict=True)
        if (i + CHUNK >= len(rows) or time.monotonic() - last >= COMMIT_EVERY
                or ctx.stop.is_set()):
            pos = _commit(conn, cfg, run_id, todo, st)
            todo = []
            last = time.monotonic()
            ctx.check_stop()
    return pos


def _commit(conn: sqlite3.Connection, cfg: VerifyConfig, run_id: int,
            done: list[tuple[upkeep.Saved, tuple[str, str, int] | None]],
            st: VerifyStats) -> verdicts.Position:
    now = time.time()
    out = [verdicts.Verdict(r.image_id, now, r.file_path, r.file_size, r.sha256,
                            v[0] if v else None, v[1] if v else None) for r, v in done]
    last = done[-1][0]
    pos: verdicts.Position = (last.last_checked, last.image_id)
    rows = [r for r, _ in done]
    vs = [v for _, v in done]
    st.checked += len(done)
    st.sound += sum(v is None for v in vs)
    for v in vs:
        if v is not None:
            st.requeued[v[0]] = st.requeued.get(v[0], 0) + 1
    st.bytes_read += sum(v[2] for v in vs if v is not None) + sound_bytes(cfg, rows, vs)
    with transaction(conn):
        verdicts.record(conn, out, pos)
        runs.heartbeat(conn, run_id, st.as_dict())
    return pos
