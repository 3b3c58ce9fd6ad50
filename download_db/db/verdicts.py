"""Verify array verdicts: a task's own verdicts database, and applying verdicts to images."""

from __future__ import annotations

import json
from dataclasses import dataclass

from .meta import get_meta, set_meta
from .schema import META_DDL, RUNS_DDL
from .sqlite import sqlite3

# One row per file a task checked, in the order checked (seq: the merge applies them
# in chunks after the last seq it applied). The file columns are the row's as the
# task read them from the frozen main database: a verdict applies only to a row that
# still holds that file (a re-download or a conversion since makes it moot).
# error_type NULL: the file was sound.
VERDICTS_DDL = """CREATE TABLE IF NOT EXISTS verdicts (
    seq        INTEGER PRIMARY KEY,
    image_id   INTEGER NOT NULL,
    checked_at REAL NOT NULL,
    file_path  TEXT,
    file_size  INTEGER,
    sha256     TEXT,
    error_type TEXT,
    detail     TEXT
)"""
DDL = (META_DDL, RUNS_DDL, VERDICTS_DDL)


@dataclass(frozen=True)
class Verdict:
    image_id: int
    checked_at: float
    file_path: str | None
    file_size: int | None
    sha256: str | None
    error_type: str | None  # None: sound
    detail: str | None


# --- the task's side (its own database) ------------------------------------------------
def create(conn: sqlite3.Connection, facts: dict[str, str]) -> None:
    """Tables and the task's facts (shard, main DB, build, image root, cutoff), inside
    the caller's transaction."""
    for ddl in DDL:
        conn.execute(ddl)
    for key, value in facts.items():
        set_meta(conn, key, value)


Position = tuple[float | None, int]  # (last_checked as read, image_id) of the last verdict


def position(conn: sqlite3.Connection) -> Position | None:
    """Where the task's walk stopped (None: it has not started)."""
    text = get_meta(conn, "position")
    if not text:
        return None
    lc, image_id = json.loads(text)
    return lc, image_id


def record(conn: sqlite3.Connection, verdicts: list[Verdict], pos: Position) -> None:
    """A chunk of verdicts and the walk's new position (inside the caller's transaction:
    a kill keeps both or neither)."""
    conn.executemany(
        "INSERT INTO verdicts(image_id, checked_at, file_path, file_size, sha256, error_type, "
        "detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(v.image_id, v.checked_at, v.file_path, v.file_size, v.sha256, v.error_type,
          v.detail[:2000] if v.detail else None) for v in verdicts])
    set_meta(conn, "position", json.dumps(list(pos)))


def count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM verdicts").fetchone()[0]


# --- the merge's side (the main database, the task's attached as ``schema``) ------------
# The main database's meta key holding the last seq applied from one verdicts DB: a
# merge killed midway, or run while the task still writes, goes on from there.
_APPLIED = "verdicts_applied:{}"


def applied(conn: sqlite3.Connection, verdicts_id: str) -> int:
    return int(get_meta(conn, _APPLIED.format(verdicts_id)) or 0)


def mark_applied(conn: sqlite3.Connection, verdicts_id: str, seq: int) -> None:
    """Inside the transaction that applied the verdicts up to ``seq``."""
    set_meta(conn, _APPLIED.format(verdicts_id), str(seq))


def forget_applied(conn: sqlite3.Connection, verdicts_id: str) -> None:
    """Once the verdicts database is gone."""
    conn.execute("DELETE FROM meta WHERE key = ?", (_APPLIED.format(verdicts_id),))


def facts(conn: sqlite3.Connection, schema: str) -> dict[str, str]:
    """The task's facts (its meta), from its database attached as ``schema``."""
    return dict(conn.execute(f"SELECT key, value FROM {schema}.meta").fetchall())


def next_chunk(conn: sqlite3.Connection, schema: str, after: int, n: int) -> tuple[int, int]:
    """(last seq, verdicts) of the next ``n`` verdicts after seq ``after`` (a rowid
    range); (after, 0) when there are none."""
    hi, k = conn.execute(
        f"SELECT max(seq), count(*) FROM (SELECT seq FROM {schema}.verdicts WHERE seq > ? "
        "ORDER BY seq LIMIT ?)", (after, n)).fetchone()
    return (hi, k) if k else (after, 0)


# The row still holds the file the task checked, and no check since (a local verify
# meanwhile) has the newer word; otherwise the verdict is moot.
_SAME_FILE = ("image_id = :id AND status = 'success' AND file_path IS :path "
              "AND file_size IS :size AND sha256 IS :sha "
              "AND (last_checked IS NULL OR last_checked < :at)")
_CHECKED = f"UPDATE images SET last_checked = :at WHERE {_SAME_FILE}"
# As upkeep.requeue: pending with a fresh attempts budget, file columns cleared.
_REQUEUE = f"""
UPDATE images SET status = 'pending', attempts = 0, next_attempt_at = 0,
       error_type = :etype, error_detail = :detail, http_status = NULL, file_path = NULL,
       file_size = NULL, sha256 = NULL, width = NULL, height = NULL, phash = NULL,
       dhash = NULL, edge_hashes = NULL, last_checked = :at
 WHERE {_SAME_FILE} AND claimed_by IS NULL
RETURNING gbif_id
"""
# The sound verdicts of a chunk (nearly all of them) in one statement: a join, no
# round trip per row (4.7x the rate of one UPDATE per verdict, measured here).
_SOUND = """
UPDATE images SET last_checked = v.checked_at
  FROM {schema}.verdicts AS v
 WHERE v.seq > :lo AND v.seq <= :hi AND v.error_type IS NULL AND images.image_id = v.image_id
   AND images.status = 'success' AND images.file_path IS v.file_path
   AND images.file_size IS v.file_size AND images.sha256 IS v.sha256
   AND (images.last_checked IS NULL OR images.last_checked < v.checked_at)
"""


def apply(conn: sqlite3.Connection, schema: str, lo: int, hi: int) -> list[tuple[Verdict, int]]:
    """What a local verify does with the verdicts whose seq is in (lo, hi] (inside the
    caller's transaction): sound files get last_checked, unsound ones go back to
    pending. An unsound file whose row is claimed (a success awaiting its rename) is
    marked checked, as the local verify does. Returns (verdict, gbif_id) of the rows
    requeued, for the roll-up and the removal of their files. Idempotent: a requeued
    row is no longer a success, a stamped one is no longer older than the verdict."""
    conn.execute(_SOUND.format(schema=schema), {"lo": lo, "hi": hi})
    unsound = [Verdict(*r) for r in conn.execute(
        f"SELECT image_id, checked_at, file_path, file_size, sha256, error_type, detail "
        f"FROM {schema}.verdicts WHERE seq > ? AND seq <= ? AND error_type IS NOT NULL "
        "ORDER BY seq", (lo, hi))]
    requeued = []
    held = []
    for v in unsound:
        args = {"id": v.image_id, "path": v.file_path, "size": v.file_size, "sha": v.sha256,
                "at": v.checked_at}
        row = conn.execute(_REQUEUE, {**args, "etype": v.error_type,
                                      "detail": (v.detail or "")[:2000]}).fetchone()
        if row is None:
            held.append(args)
        else:
            requeued.append((v, row[0]))
    conn.executemany(_CHECKED, held)
    return requeued


# A task's runs go to the main database's runs once (a repeated merge adds none).
_RUNS = """
INSERT INTO runs(stage, started_at, finished_at, heartbeat_at, hostname, pid, argv, outcome,
                 counts, message, shard)
SELECT stage, started_at, finished_at, heartbeat_at, hostname, pid, argv,
       CASE outcome WHEN 'running' THEN 'crashed' ELSE outcome END, counts, message, :shard
  FROM {schema}.runs AS t
 WHERE NOT EXISTS (SELECT 1 FROM runs AS r WHERE r.stage = t.stage
                   AND r.started_at = t.started_at AND r.hostname IS t.hostname
                   AND r.pid IS t.pid)
 ORDER BY run_id
"""


def copy_runs(conn: sqlite3.Connection, schema: str, shard: str | None) -> None:
    conn.execute(_RUNS.format(schema=schema), {"shard": shard})
