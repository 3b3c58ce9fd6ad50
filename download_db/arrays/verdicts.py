"""Verify arrays: where tasks keep their verdicts, and folding verdicts into the main database."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ..db import claims, gbif_ids, verdicts
from ..db.connection import open_readonly, readonly_uri, remove_database, transaction
from ..db.meta import get_meta
from ..db.sqlite import sqlite3
from ..errors import DatabaseError, UsageError
from ..progress import say
from ..states import ALIVE_WINDOW, DEFAULT_MAX_ATTEMPTS, VERIFY_MISSING
from .plan import Shard, other_counts, tasks_dir_for

# Verdicts applied per transaction: bounds what a kill redoes and how long the main
# database's write lock is held.
CHUNK = 10_000
_SCHEMA = "vtask"  # the task's database, attached to the main one


def verdicts_path(tasks_dir: Path, shard: Shard) -> Path:
    return tasks_dir / f"verify-{shard.index:04d}-of-{shard.count:04d}.db"


def verdict_dbs(tasks_dir: Path) -> list[Path]:
    """Verify tasks' databases (a .building file is a task killed while creating
    its empty database: nothing in it)."""
    if not tasks_dir.is_dir():
        return []
    return sorted(p for p in tasks_dir.glob("verify-*-of-*.db") if p.is_file())


def refuse_other_counts(tasks_dir: Path, shard: Shard) -> None:
    """Unmerged verdicts of an array with another N would be checked again (each
    task's position is in its own database): merge them first."""
    others = other_counts(verdict_dbs(tasks_dir), shard)
    if others:
        raise UsageError(
            f"{tasks_dir} holds unmerged verdicts of a {others[0]}-task verify array; "
            f"run `gbif-download-db merge` before running it with {shard.count} tasks "
            f"(or resubmit with {others[0]} tasks)")


def liveness(path: Path, now: float | None = None, stage: str = "verify") -> str | None:
    """Why the array task (a verify task's, or ``stage``'s) may still be writing: a run
    a restart would not recover (recent heartbeat, and alive if it ran on this
    machine); None when none."""
    conn = open_readonly(path)
    try:
        live = claims.live_tokens(conn, stale_after=ALIVE_WINDOW, now=now, stage=stage)
    finally:
        conn.close()
    if not live:
        return None
    host, pid, _run = sorted(live)[0].rsplit(":", 2)
    return f"run on {host} pid {pid}, heartbeat within {ALIVE_WINDOW / 60:.0f} minutes"


@dataclass
class VerdictStats:
    tasks: int = 0  # verdict databases folded in and removed
    applied: int = 0  # verdicts read (moot ones included)
    requeued: dict[str, int] = field(default_factory=dict)  # by reason
    kept: list[str] = field(default_factory=list)  # still written (--force): applied, kept


def merge_verdicts(conn: sqlite3.Connection, db: Path, *, force: bool = False,
                   out: TextIO | None = None) -> VerdictStats:
    """Apply every verify task's verdicts to the main database, CHUNK per transaction,
    then remove the task's database. A task still running stops the merge (the caller
    checked, unless ``force``: then what it has recorded is applied and its database
    kept, to be applied from there next time). Idempotent: the last seq applied is
    kept in the main database's meta, in the same transaction as the chunk."""
    st = VerdictStats()
    build = get_meta(conn, "build_id")
    for path in verdict_dbs(tasks_dir_for(db)):
        live = liveness(path)
        if live and not force:
            raise DatabaseError(f"verify task {path.name} may still be writing ({live}); "
                                "wait for it to finish (or qdel/scancel it), or pass --force")
        n, requeued, vid = _fold(conn, path, build, keep_runs=bool(live))
        st.applied += n
        for etype, k in requeued.items():
            st.requeued[etype] = st.requeued.get(etype, 0) + k
        bad = ", ".join(f"{k} {v:,}" for k, v in sorted(requeued.items())) or "none"
        if live:
            st.kept.append(path.name)
            say(f"merge: {path.name}: {n:,} verdicts applied (requeued: {bad}); the task "
                "still runs, so its database stays", out)
            continue
        remove_database(path, lock_file=True)
        with transaction(conn):
            verdicts.forget_applied(conn, vid)
        st.tasks += 1
        say(f"merge: {path.name}: {n:,} verdicts applied (requeued: {bad})", out)
    return st


def _fold(conn: sqlite3.Connection, path: Path, build: str | None,
          keep_runs: bool) -> tuple[int, dict[str, int], str]:
    """Apply one task's verdicts not yet applied; (verdicts read, requeued by reason,
    the verdicts database's id)."""
    conn.execute(f"ATTACH DATABASE ? AS {_SCHEMA}", (readonly_uri(path),))
    try:
        facts = verdicts.facts(conn, _SCHEMA)
        if facts.get("build_id") != build:
            raise DatabaseError(f"{path} comes from another build of the database (it was "
                                "rebuilt with --reset); its image ids mean nothing here: "
                                "delete it")
        vid = facts["verdicts_id"]
        after = verdicts.applied(conn, vid)
        root = Path(facts.get("install_path", ""))
        n = 0
        requeued: dict[str, int] = {}
        while True:
            hi, k = verdicts.next_chunk(conn, _SCHEMA, after, CHUNK)
            if not k:
                break
            with transaction(conn):
                done = verdicts.apply(conn, _SCHEMA, after, hi)
                if done:
                    gbif_ids.rollup(conn, {g for _, g in done},
                                    max_attempts=DEFAULT_MAX_ATTEMPTS, now=time.time())
                verdicts.mark_applied(conn, vid, hi)
            after = hi
            n += k
            for v, _ in done:
                requeued[v.error_type or ""] = requeued.get(v.error_type or "", 0) + 1
                # as the local verify: the downloader must fetch it again, not adopt it
                if v.error_type != VERIFY_MISSING and v.file_path and root.is_dir():
                    (root / v.file_path).unlink(missing_ok=True)
        if not keep_runs:
            with transaction(conn):
                verdicts.copy_runs(conn, _SCHEMA, facts.get("task_shard"))
    finally:
        conn.execute(f"DETACH DATABASE {_SCHEMA}")
    return n, requeued, vid
