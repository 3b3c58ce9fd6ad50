"""The init_download_db.py stage: build, reset, legacy import or finalize, recorded in runs."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import NoReturn, TextIO

from ..arrays.merge import MergeStats, failed_tasks, merge_tasks, refuse_if_tasks_running
from ..arrays.plan import freeze, task_dbs, tasks_dir_for
from ..arrays.verdicts import verdict_dbs
from ..config import (
    MODE_BUILD,
    MODE_FINALIZE,
    MODE_LEGACY,
    MODE_MERGE,
    MODE_RESET,
    InitConfig,
    check_webhook_url,
)
from ..db import runs
from ..db import url_groups as url_groups_db
from ..db.connection import (
    connect,
    interruptible,
    remove_database,
    transaction,
    was_interrupted,
)
from ..db.gbif_ids import FinalizeStats, finalize
from ..db.meta import get_meta, set_meta
from ..db.schema import create_schema, migrate
from ..db.sqlite import sqlite3
from ..db.stagelock import stage_lock
from ..errors import DatabaseError, DownloadDbError, Interrupted, PrerequisiteFailed
from ..notes import StageNotes
from ..progress import RunContext, say
from ..signals import stop_on_signals
from . import occurrences, url_groups
from .legacy import LegacyStats, import_legacy
from .load import IngestStats, ingest
from .reader import Source

STAGES = {MODE_BUILD: "ingest", MODE_RESET: "ingest", MODE_LEGACY: "legacy",
          MODE_FINALIZE: "finalize", MODE_MERGE: "merge"}


def run_init(cfg: InitConfig, out: TextIO | None = None) -> dict:
    """Run one init_download_db.py invocation; returns the counts it recorded. Slack
    hears its start, its end and how it failed (SLACK_WEBHOOK_URL; else nothing)."""
    check_webhook_url(cfg.slack_webhook_url)
    stage = STAGES[cfg.mode]
    notes = StageNotes(cfg.slack_webhook_url, cfg.db, stage)
    try:
        cfg.validate()
        notes.start(f"{cfg.multimedia.name} into {cfg.db.name}" if cfg.multimedia else "")
        with stage_lock(cfg.db, exclusive=True, what="init_download_db.py"), \
                stop_on_signals() as stop:
            counts = _run(cfg, out, stop, stage)
        notes.finish(_summary(counts))
        return counts
    except BaseException as e:
        notes.failed(e)
        raise
    finally:
        notes.close()


def _run(cfg: InitConfig, out: TextIO | None, stop: threading.Event, stage: str) -> dict:
    t0 = time.monotonic()
    ctx = RunContext(out=out, bar=cfg.bar, every=cfg.progress_every, stop=stop)
    state = _db_state(cfg.db)
    source = None
    occ = None
    if cfg.mode in (MODE_LEGACY, MODE_FINALIZE, MODE_MERGE):
        if state == "missing":
            raise DatabaseError(f"database not found: {cfg.db} (build it first: "
                                "init_download_db.py --multimedia multimedia.txt)")
        if state == "foreign":
            raise DatabaseError(f"{cfg.db} exists but is not a download database")
        if state != "built" and state != "complete":
            _not_run(cfg, stage, f"the build of {cfg.db} has not finished", "run the build "
                     "command again to complete it first")
    elif cfg.multimedia is None:  # --occurrence alone: citation data for a finished build
        if state != "complete":
            raise DatabaseError(f"--occurrence without --multimedia adds to a finished build, "
                                f"and {cfg.db} is {state}")
        occ = occurrences.find(None, cfg.occurrence, lambda m: say(m, out))
    else:
        source = Source(cfg.multimedia)
        source.require_lines()
        # bad input fails before the load
        occ = occurrences.find(source.path, cfg.occurrence, lambda m: say(m, out))
        if state == "foreign":
            raise DatabaseError(f"{cfg.db} exists but is not a download database; refusing to "
                                "touch it (choose another --db)")
        if cfg.mode == MODE_RESET:
            if not cfg.force:
                refuse_if_tasks_running(cfg.db, "rebuilding the database")
            remove_database(cfg.db)
            # results of arrays over the old build: their image ids mean nothing
            # now (their files are adopted by the next download)
            tasks_dir = tasks_dir_for(cfg.db)
            for path in [*task_dbs(tasks_dir), *verdict_dbs(tasks_dir)]:
                remove_database(path, lock_file=True)
        elif state == "complete":
            raise DatabaseError(f"database already exists: {cfg.db}; use --reset to rebuild it, "
                                "--legacy-only to import legacy files, or --finalize-only")
    if cfg.mode in (MODE_FINALIZE, MODE_MERGE) and not cfg.force:
        failed = failed_tasks(cfg.db)
        if failed:
            _not_run(cfg, stage, f"array task {failed[0]}" + (
                f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""),
                "rerun that task (submit_pipeline.sh --rerun-tasks K --tasks N), or pass "
                "--force to merge what the tasks committed anyway")
    conn = _open(cfg)
    run_id = runs.start_run(conn, stage)
    counts: dict = {}
    try:
        if source is None:  # every stage that writes a built DB folds array results in first
            try:
                with interruptible(conn, stop.is_set):  # one statement per task: minutes
                    mst = merge_tasks(conn, cfg.db, force=cfg.force, out=out, stop=stop.is_set)
            except sqlite3.OperationalError as e:
                if was_interrupted(e):
                    raise Interrupted("stopped by a signal") from None
                raise
            if mst.tasks or mst.verify.tasks or mst.verify.kept or cfg.mode == MODE_MERGE:
                counts["merge"] = _merge_summary(mst, out)
        if source is not None:
            say(f"ingest: {source.path} -> {cfg.db}", out)
            st = ingest(conn, source, run_id=run_id, chunk_bytes=cfg.chunk_mb << 20,
                        workers=cfg.workers, ctx=ctx)
            counts["ingest"] = _ingest_summary(st, out)
        # a database built before url_group gets its groups once, here (its next init stage)
        if get_meta(conn, "ingest_phase") == "done" and not url_groups_db.done(conn):
            say("url groups: finding URLs several images share (once)", out)
            counts["url_groups"] = dict(zip(("groups", "images"),
                                            url_groups.compute(conn, ctx), strict=True))
        if occ is not None:
            counts["occurrences"] = asdict(occurrences.load(conn, occ, ctx))
        if cfg.processed_file is not None and cfg.mode not in (MODE_FINALIZE, MODE_MERGE):
            lst = import_legacy(conn, cfg.install_path, cfg.processed_file, cfg.failed_file,
                                ctx, verify=cfg.legacy_verify, workers=cfg.workers)
            counts["legacy"] = _legacy_summary(lst, out)
        # A fresh build has every gbifID pending by construction: nothing to roll up.
        if cfg.mode not in (MODE_BUILD, MODE_RESET, MODE_MERGE) or "legacy" in counts:
            # a line per chunk, not per --progress-every: a chunk is seconds of work
            fst = finalize(conn, replace(ctx, every=0.0), max_attempts=cfg.max_attempts)
            counts["finalize"] = _finalize_summary(fst, out)
        if cfg.mode == MODE_FINALIZE:  # the duplicate groups follow what the merge brought
            from ..identity.dedupe import dedupe, summary  # late: scipy only when needed

            root = cfg.install_path if cfg.install_path.is_dir() else None
            dst = dedupe(conn, ctx, root=root, max_attempts=cfg.max_attempts)
            summary(dst, ctx)
            counts["dedupe"] = dst.as_dict()
        if source is not None:
            with transaction(conn):
                set_meta(conn, "build_complete", "1")
    except (KeyboardInterrupt, Interrupted):
        runs.finish_run(conn, run_id, runs.INTERRUPTED, counts, "stopped by a signal")
        raise Interrupted("stopped by a signal; run the same command again to continue") from None
    except (DownloadDbError, sqlite3.Error, OSError) as e:
        runs.finish_run(conn, run_id, runs.FAILED, counts, f"{type(e).__name__}: {e}")
        raise
    counts["seconds"] = round(time.monotonic() - t0, 2)
    runs.finish_run(conn, run_id, runs.OK, counts)
    conn.execute("PRAGMA optimize")
    # Self-contained for readers on other hosts (array tasks, reports): see array.py.
    if not freeze(conn):
        say("warning: another process has the database open, so it stays in WAL mode; "
            "array tasks refuse it until init_download_db.py --merge-only is run again", out)
    conn.close()
    say(f"done in {counts['seconds']:.1f}s", out)
    return counts


def _not_run(cfg: InitConfig, stage: str, why: str, hint: str) -> NoReturn:
    """Record the stage as not run because its prerequisite failed, naming the last
    ingest run when the build is what is missing; then refuse."""
    conn = _open(cfg)
    try:
        if "build" in why:
            last = runs.last_run(conn, "ingest")
            why += f" (last {runs.describe('ingest', last)})" if last else ""
        runs.record_not_run(conn, stage, why)
    finally:
        conn.close()
    raise PrerequisiteFailed(f"{stage} not run: {why}; {hint}")


def _summary(counts: dict) -> str:
    """One line for Slack from the counts the stage recorded."""
    parts = []
    if "ingest" in counts:
        c = counts["ingest"]
        parts.append(f"{c['images']:,} distinct images from {c['lines']:,} lines "
                     f"({c['skipped']:,} skipped)")
    if "merge" in counts:
        parts.append(f"merged {counts['merge']['tasks']:,} task databases "
                     f"({counts['merge']['images']:,} image results)")
    if "legacy" in counts:
        c = counts["legacy"]
        parts.append(f"legacy: {c.get('renamed', 0) + c.get('relabeled', 0):,} files adopted")
    if "finalize" in counts:
        parts.append(f"{counts['finalize']['gbif_ids']:,} gbifIDs rolled up "
                     f"({counts['finalize']['changed']:,} changed)")
    return "; ".join(parts)


def _db_state(db: Path) -> str:
    """missing / foreign (not ours) / loading (ingest unfinished) / built (ingest done,
    build not) / complete."""
    if not db.exists() or db.stat().st_size == 0:
        return "missing"
    try:
        # read-write on purpose: we hold the stage lock, and a build killed
        # mid-transaction leaves a hot journal that must be rolled back first
        conn = sqlite3.connect(db, timeout=60)
        try:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if not names:
                return "missing"  # killed between creating the file and the schema
            if "meta" not in names:
                return "foreign"
            if get_meta(conn, "build_complete") == "1":
                return "complete"
            return "built" if get_meta(conn, "ingest_phase") == "done" else "loading"
        finally:
            conn.close()
    except sqlite3.Error:
        return "foreign"


def _open(cfg: InitConfig) -> sqlite3.Connection:
    try:
        # a bulk load's pragmas; not for adding occurrences to a built database
        conn = connect(cfg.db, bulk=cfg.mode in (MODE_BUILD, MODE_RESET) and bool(cfg.multimedia))
        # no table yet: a new file, or one whose creator was killed before the schema
        # committed (the file and its journal mode come first); _db_state calls it missing
        fresh = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        if fresh:
            create_schema(conn)
        else:
            migrate(conn)
    except sqlite3.DatabaseError as e:
        raise DatabaseError(f"cannot open {cfg.db} as a download database: {e}") from None
    return conn


def _ingest_summary(st: IngestStats, out: TextIO | None) -> dict:
    say(f"ingest: {st.lines:,} lines: {st.rows_ok:,} rows ingested into {st.images:,} distinct "
        f"images, {st.skipped:,} skipped", out)
    for reason, n in sorted(st.skips.items(), key=lambda kv: -kv[1]):
        example = st.samples.get(reason, [""])[0] if st.samples.get(reason) else ""
        say(f"  skipped {reason:<22} {n:>12,}" + (f"   e.g. {example[:80]!r}" if example else ""),
            out)
    if st.split_gbif_ids:
        say(f"  {st.split_gbif_ids:,} gbifIDs had rows in several places of the file (merged)", out)
    return {"lines": st.lines, "rows_ok": st.rows_ok, "images": st.images,
            "skipped": st.skipped, "skips": st.skips, "split_gbif_ids": st.split_gbif_ids}


def _legacy_summary(st: LegacyStats, out: TextIO | None) -> dict:
    say(f"legacy: {st.lines:,} lines read: {st.renamed:,} renamed to -00.jpg, "
        f"{st.relabeled:,} already renamed, {st.already:,} already imported, "
        f"{st.missing:,} missing on disk (left pending), {st.unknown:,} not in this database, "
        f"{st.not_numeric:,} not a gbifID", out)
    if st.verified or st.invalid:
        say(f"legacy: {st.verified:,} files decoded and recorded, {st.invalid:,} unusable "
            "(left pending as legacy_invalid, for the download to fetch)", out)
    if st.failed_listed:
        say(f"legacy: {st.failed_listed:,} failed IDs ({st.failed_known:,} in this database) "
            "stay pending for a fresh, tracked retry", out)
    return dict(st.__dict__)


def _merge_summary(st: MergeStats, out: TextIO | None) -> dict:
    v = st.verify
    verify = (f"; {v.tasks + len(v.kept):,} verify task databases, {v.applied:,} verdicts "
              f"({sum(v.requeued.values()):,} files requeued)") if v.tasks or v.kept else ""
    say(f"merge: {st.tasks:,} task databases, {st.images:,} image results{verify} in "
        f"{st.seconds:.1f}s", out)
    return {"tasks": st.tasks, "images": st.images, "seconds": round(st.seconds, 2),
            **({"verify": {"tasks": v.tasks, "verdicts": v.applied,
                           "requeued": dict(v.requeued)}} if v.tasks or v.kept else {})}


def _finalize_summary(st: FinalizeStats, out: TextIO | None) -> dict:
    parts = ", ".join(f"{k} {v:,}" for k, v in st.by_status.items())
    say(f"finalize: {st.gbif_ids:,} gbifIDs ({parts}); {st.changed:,} changed in "
        f"{st.seconds:.1f}s", out)
    return {"gbif_ids": st.gbif_ids, "changed": st.changed, "by_status": st.by_status}
