"""The hosts table: ids and image counts from the ingest, politeness and breaker state per host."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping

from .sqlite import sqlite3

# A host's politeness and circuit-breaker state, as the report and a merge read it.
STATE_COLUMNS = ("host_id", "cooldown_until", "cooldown_reason", "breaker_state", "quarantined",
                 "quarantined_at", "last_error", "sample_detail", "updated_at",
                 "concurrency_limit")
# What a downloader may save about a host (HostGate's fields).
SAVED_COLUMNS = frozenset({"cooldown_until", "cooldown_reason", "breaker_state",
                           "breaker_opened_at", "quarantined", "quarantined_at", "last_error",
                           "sample_detail", "concurrency_limit"})
_STATE = ", ".join(STATE_COLUMNS)


# --- ingest ---------------------------------------------------------------------------

def ids_by_name(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT host, host_id FROM hosts"))


def add(conn: sqlite3.Connection, rows: Iterable[tuple[int, str]]) -> None:
    """New hosts, as (host_id, host)."""
    conn.executemany("INSERT INTO hosts(host_id, host) VALUES (?, ?)", rows)


def count_images(conn: sqlite3.Connection, counts: Iterable[tuple[int, int]]) -> None:
    """Add (images, host_id) to each host's n_images."""
    conn.executemany("UPDATE hosts SET n_images = n_images + ? WHERE host_id = ?", counts)


def uncount_images(conn: sqlite3.Connection, image_ids: Iterable[int]) -> None:
    """Take these images out of their hosts' n_images (before they are deleted)."""
    conn.executemany("UPDATE hosts SET n_images = n_images - 1 WHERE host_id = "
                     "(SELECT host_id FROM images WHERE image_id = ?)",
                     [(i,) for i in image_ids])


def ensure(conn: sqlite3.Connection, host: str) -> int:
    """The host's id, its row made if new (a canvas on a host the ingest did not see)."""
    conn.execute("INSERT OR IGNORE INTO hosts(host) VALUES (?)", (host,))
    return conn.execute("SELECT host_id FROM hosts WHERE host = ?", (host,)).fetchone()[0]


def copy_from(conn: sqlite3.Connection, schema: str) -> None:
    """Copy every host of an attached database (an array task's from the main DB)."""
    conn.execute(f"INSERT INTO hosts SELECT * FROM {schema}.hosts")


# --- download -------------------------------------------------------------------------

def names(conn: sqlite3.Connection) -> dict[int, str]:
    return dict(conn.execute("SELECT host_id, host FROM hosts"))


def with_images(conn: sqlite3.Connection) -> list[tuple[int, str, int, int]]:
    """(host_id, host, quarantined, n_images) of hosts that have images, most images first."""
    return conn.execute("SELECT host_id, host, quarantined, n_images FROM hosts "
                        "WHERE n_images > 0 ORDER BY n_images DESC").fetchall()


def blocked(conn: sqlite3.Connection, now: float) -> list[tuple[str, float | None, float | None]]:
    """(host, cooldown_until, breaker_opened_at if open) of hosts still cooling down
    or with an open breaker: what a starting downloader restores."""
    return conn.execute(
        "SELECT host, cooldown_until, CASE WHEN breaker_state = 'open' "
        "THEN breaker_opened_at END FROM hosts WHERE cooldown_until > ? OR "
        "breaker_state = 'open'", (now,)).fetchall()


def save_state(conn: sqlite3.Connection, host: str, fields: Mapping[str, object],
               now: float | None = None) -> None:
    """Record a host's politeness state (only SAVED_COLUMNS; the host row is made
    if the ingest did not know it)."""
    cols = {k: v for k, v in fields.items() if k in SAVED_COLUMNS}
    conn.execute("INSERT OR IGNORE INTO hosts(host) VALUES (?)", (host,))
    if cols:
        sets = ", ".join(f"{k} = ?" for k in cols)
        conn.execute(f"UPDATE hosts SET {sets}, updated_at = ? WHERE host = ?",
                     (*cols.values(), time.time() if now is None else now, host))


# --- merge ----------------------------------------------------------------------------

def merge_from(conn: sqlite3.Connection, schema: str) -> None:
    """Take an attached task database's host states that are newer than ours."""
    conn.execute(f"""
UPDATE hosts SET cooldown_until = t.cooldown_until, cooldown_reason = t.cooldown_reason,
       breaker_state = t.breaker_state, breaker_opened_at = t.breaker_opened_at,
       quarantined = t.quarantined, quarantined_at = t.quarantined_at, last_error = t.last_error,
       sample_detail = coalesce(t.sample_detail, hosts.sample_detail), updated_at = t.updated_at,
       concurrency_limit = coalesce(t.concurrency_limit, hosts.concurrency_limit)
  FROM {schema}.hosts AS t
 WHERE t.host_id = hosts.host_id AND t.updated_at > coalesce(hosts.updated_at, 0)
""")


# --- report and check -----------------------------------------------------------------

def troubled(conn: sqlite3.Connection) -> list[tuple]:
    """STATE_COLUMNS of hosts cooling down, quarantined or with a breaker not closed."""
    return conn.execute(f"SELECT {_STATE} FROM hosts WHERE cooldown_until IS NOT NULL "
                        "OR quarantined = 1 OR breaker_state <> 'closed'").fetchall()


def touched(conn: sqlite3.Connection) -> list[tuple]:
    """STATE_COLUMNS of hosts whose state a downloader saved (an array task's)."""
    return conn.execute(f"SELECT {_STATE} FROM hosts WHERE updated_at IS NOT NULL").fetchall()


def samples(conn: sqlite3.Connection, host_ids: Iterable[int]) -> dict[int, str | None]:
    """The captured text of a non-image response, per host."""
    return dict(conn.execute("SELECT host_id, sample_detail FROM hosts WHERE host_id IN "
                             "(SELECT value FROM json_each(?))", (json.dumps(list(host_ids)),)))


def limits(conn: sqlite3.Connection) -> list[tuple]:
    """STATE_COLUMNS of hosts whose adaptive limit a downloader recorded."""
    return conn.execute(f"SELECT {_STATE} FROM hosts WHERE concurrency_limit IS NOT NULL"
                        ).fetchall()


def miscounted(conn: sqlite3.Connection) -> int:
    """Hosts whose n_images disagrees with the image counters."""
    return conn.execute(
        "SELECT count(*) FROM hosts h WHERE n_images <> (SELECT coalesce(sum(n), 0) "
        "FROM image_tally t WHERE t.host_id = h.host_id)").fetchone()[0]
