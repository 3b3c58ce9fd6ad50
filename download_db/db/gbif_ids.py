"""Finalize: roll image statuses up into gbif_ids in bounded, idempotent chunks."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..progress import RunContext
from ..states import DEFAULT_MAX_ATTEMPTS, GBIF_STATUSES, WORK_LEFT_SQL
from .connection import transaction
from .sqlite import sqlite3

CHUNK_IDS = 500_000  # per transaction: bounds the WAL and the work a kill loses

# A gbifID is done when every distinct image succeeded; failed when nothing is
# left to try but not all succeeded; pending when no image was attempted yet;
# partial otherwise (work left, something attempted). Transient failures with
# attempts left count as work left (states.WORK_LEFT_SQL).
_ROLLUP_TEMPLATE = """
UPDATE gbif_ids
   SET n_success = s.n_success,
       status = s.status,
       completed_at = CASE WHEN s.status IN ('done', 'failed')
                           THEN COALESCE(gbif_ids.completed_at, :now)
                           ELSE gbif_ids.completed_at END
  FROM (SELECT gbif_id,
               sum(status = 'success') AS n_success,
               CASE WHEN sum(status = 'success') = count(*) THEN 'done'
                    WHEN sum({work_left}) = 0 THEN 'failed'
                    WHEN sum(status <> 'pending' OR attempts > 0) = 0 THEN 'pending'
                    ELSE 'partial' END AS status
          FROM images
         WHERE {which}
         GROUP BY gbif_id) AS s
 WHERE gbif_ids.gbif_id = s.gbif_id
   AND (gbif_ids.n_success IS NOT s.n_success OR gbif_ids.status IS NOT s.status
        OR (s.status IN ('done', 'failed') AND gbif_ids.completed_at IS NULL))
"""
# every gbifID in a range (finalize, in chunks) / a list of them (after each result batch)
_ROLLUP = _ROLLUP_TEMPLATE.format(which="gbif_id >= :lo AND gbif_id <= :hi",
                                  work_left=WORK_LEFT_SQL)
_ROLLUP_IDS = _ROLLUP_TEMPLATE.format(which="gbif_id IN (SELECT value FROM json_each(:ids))",
                                      work_left=WORK_LEFT_SQL)


def rollup(conn: sqlite3.Connection, gbif_ids: Iterable[int], *, max_attempts: int,
           now: float | None = None) -> int:
    """Bring these gbifIDs' statuses up to date with their images (inside the
    caller's transaction, after images changed); returns how many changed."""
    cur = conn.execute(_ROLLUP_IDS, {"now": time.time() if now is None else now,
                                     "max_attempts": max_attempts,
                                     "ids": json.dumps(sorted(set(gbif_ids)))})
    return max(cur.rowcount, 0)


def add_images(conn: sqlite3.Connection, gbif_id: int, n: int) -> None:
    """Count n images added to a gbifID after the ingest (its other IIIF canvases)."""
    conn.execute("UPDATE gbif_ids SET n_images = n_images + ? WHERE gbif_id = ?", (n, gbif_id))


@dataclass
class FinalizeStats:
    gbif_ids: int = 0
    changed: int = 0
    seconds: float = 0.0
    by_status: dict[str, int] = field(default_factory=dict)


def finalize(conn: sqlite3.Connection, ctx: RunContext | None = None, *,
             max_attempts: int = DEFAULT_MAX_ATTEMPTS,
             chunk_ids: int = CHUNK_IDS) -> FinalizeStats:
    """Recompute n_success/status of every gbifID; safe to kill and re-run. One
    transaction and (with ctx.every 0, the default) one progress line per chunk."""
    ctx = ctx or RunContext(every=0.0)
    t0 = time.monotonic()
    stats = FinalizeStats()
    total = conn.execute("SELECT count(*) FROM gbif_ids").fetchone()[0]
    progress = ctx.progress("finalize", total, item="gbifIDs", counting=True)
    lo = -1
    done = 0
    try:
        while True:
            row = conn.execute("SELECT gbif_id FROM gbif_ids WHERE gbif_id > ? ORDER BY gbif_id "
                               "LIMIT 1 OFFSET ?", (lo, chunk_ids - 1)).fetchone()
            hi = row[0] if row else (1 << 62)
            with transaction(conn):
                cur = conn.execute(_ROLLUP, {"now": time.time(), "max_attempts": max_attempts,
                                             "lo": lo + 1, "hi": hi})
                stats.changed += max(cur.rowcount, 0)
            n = conn.execute("SELECT count(*) FROM gbif_ids WHERE gbif_id > ? AND gbif_id <= ?",
                             (lo, hi)).fetchone()[0]
            done += n
            progress.update(done, n)  # counting: done_bytes is the item count
            if row is None:
                break
            ctx.check_stop()
            lo = hi
    finally:
        progress.close()
    stats.gbif_ids = total
    stats.by_status = gbif_status_counts(conn)
    stats.seconds = time.monotonic() - t0
    return stats


def gbif_status_counts(conn: sqlite3.Connection) -> dict[str, int]:
    counts = dict.fromkeys(GBIF_STATUSES, 0)
    counts.update(conn.execute("SELECT status, count(*) FROM gbif_ids GROUP BY status"))
    return counts
