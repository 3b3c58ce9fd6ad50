"""Dedupe: exact groups by sha256 and near groups by pHash distance, written in bounded chunks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..arrays.merge import refuse_if_tasks_running
from ..arrays.plan import freeze
from ..db import identity, runs
from ..db.connection import connect, retry_locked, transaction
from ..db.meta import get_meta, set_meta
from ..db.schema import migrate
from ..db.sqlite import sqlite3
from ..db.stagelock import stage_lock
from ..errors import DownloadDbError, Interrupted, UsageError
from ..progress import RunContext
from ..signals import stop_on_signals
from . import groups

# pHash distance that makes two saved images near copies. Chosen by
# tests/test_dedupe.py on the shipped herbarium sheets: the same sheet re-encoded or
# halved is 0-1 bits away, two different sheets 26. A crop of the colour bar
# moves pHash by 12-14 bits there, which no k that scales can cover: at 50M
# hashes, k = 14 would put ~165 random neighbours next to every image (and 15
# bands of 4 bits leave the index useless); k = 3 keeps four 16-bit bands, which
# bench/dedupe.py measures at 50M. A smaller collection may pass a larger k.
DEFAULT_NEAR_DISTANCE = 3
META_NEAR_DISTANCE = "near_distance"  # the last --near-distance: finalize keeps using it
CHUNK = 20_000  # group changes per transaction


@dataclass(frozen=True)
class DedupeConfig:
    db: Path
    near_distance: int | None = None  # None: the last dedupe's, else the default
    force: bool = False
    bar: bool | None = None
    progress_every: float = 10.0

    def validate(self) -> DedupeConfig:
        if not self.db.is_file():
            raise UsageError(f"--db {self.db}: no such database")
        if self.near_distance is not None and not 0 <= self.near_distance <= 32:
            raise UsageError("--near-distance must be between 0 and 32")
        return self


@dataclass
class DedupeStats:
    exact_groups: int = 0
    exact_images: int = 0
    near_groups: int = 0
    near_images: int = 0
    near_distance: int = DEFAULT_NEAR_DISTANCE
    changed: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["seconds"] = round(self.seconds, 2)
        return d


def dedupe(conn: sqlite3.Connection, ctx: RunContext | None = None, *,
           near_distance: int | None = None, chunk: int = CHUNK) -> DedupeStats:
    """Recompute dup_group and near_group of every saved image and write only the
    rows that change, a transaction per chunk: safe to kill and re-run (a re-run
    computes the same groups and finishes the writes). ``near_distance`` None: the
    distance the last dedupe used (remembered in meta), else the default."""
    ctx = ctx or RunContext(every=0.0)
    t0 = time.monotonic()
    k = near_distance
    if k is None:
        k = int(get_meta(conn, META_NEAR_DISTANCE) or DEFAULT_NEAR_DISTANCE)
    st = DedupeStats(near_distance=k)
    dup = identity.duplicates(conn)
    ids, hashes = identity.hashed(conn)
    a, b = groups.near_pairs(hashes, k)
    near = groups.group_ids(ids, a, b)
    st.exact_images, st.exact_groups = len(dup), len(set(dup.values()))
    st.near_images, st.near_groups = len(near), len(set(near.values()))
    old = identity.grouped(conn)
    changes = sorted(
        (dup.get(i), near.get(i), i) for i in set(dup) | set(near) | set(old)
        if old.get(i, (None, None)) != (dup.get(i), near.get(i)))
    progress = ctx.progress("dedupe", len(changes), item="images", counting=True)
    try:
        for lo in range(0, len(changes), chunk):
            part = changes[lo:lo + chunk]

            def txn(part=part) -> None:
                with transaction(conn):
                    identity.save_groups(conn, part)

            retry_locked(txn)
            st.changed += len(part)
            progress.update(st.changed, len(part))
            ctx.check_stop()
    finally:
        progress.close()
    with transaction(conn):
        set_meta(conn, META_NEAR_DISTANCE, str(k))
    st.seconds = time.monotonic() - t0
    return st


def summary(st: DedupeStats, ctx: RunContext) -> None:
    ctx.say(f"dedupe: {st.exact_groups:,} exact groups ({st.exact_images:,} images), "
            f"{st.near_groups:,} near groups within {st.near_distance} bits "
            f"({st.near_images:,} images); "
            f"{st.changed:,} rows changed in {st.seconds:.1f}s")


def run_dedupe(cfg: DedupeConfig, out: TextIO | None = None) -> DedupeStats:
    """`gbif-download-db dedupe`: the groups on their own, recorded in runs."""
    cfg.validate()
    if not cfg.force:
        refuse_if_tasks_running(cfg.db, "deduplicating")
    with stage_lock(cfg.db, exclusive=True, what="gbif-download-db dedupe"), \
            stop_on_signals() as stop:
        ctx = RunContext(out=out, bar=cfg.bar, every=cfg.progress_every, stop=stop)
        conn = connect(cfg.db)
        try:
            migrate(conn)
            run_id = runs.start_run(conn, "dedupe")
            try:
                st = dedupe(conn, ctx, near_distance=cfg.near_distance)
            except (KeyboardInterrupt, Interrupted):
                runs.finish_run(conn, run_id, runs.INTERRUPTED, None, "stopped by a signal")
                raise Interrupted("stopped by a signal; run the same command again to "
                                  "continue") from None
            except (DownloadDbError, sqlite3.Error, OSError) as e:
                runs.finish_run(conn, run_id, runs.FAILED, None, f"{type(e).__name__}: {e}")
                raise
            runs.finish_run(conn, run_id, runs.OK, st.as_dict())
            summary(st, ctx)
            # readable from other hosts again, as after finalize (arrays read it frozen)
            freeze(conn)
            return st
        finally:
            conn.close()
