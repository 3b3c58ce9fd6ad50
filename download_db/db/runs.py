"""The runs table: one row per stage run (what ran, where, how it ended)."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import NoReturn

from ..errors import DownloadDbError, Interrupted
from ..states import DEPENDS_ON
from .connection import transaction
from .sqlite import sqlite3

RUNNING = "running"
OK = "ok"
FAILED = "failed"
INTERRUPTED = "interrupted"
# Not run: the stage it depends on failed (its message names that run).
PREREQUISITE_FAILED = "prerequisite_failed"
# Outcomes of a prerequisite that stop the stages depending on it. Not interrupted or
# crashed: what those runs committed is sound, and running the same command resumes it.
BLOCKING = (FAILED, PREREQUISITE_FAILED)

# What ends a stage's run in a way worth recording: a stop signal, or a problem the
# user can act on. Anything else is a bug: the run stays 'running' and the next
# start or report calls it crashed.
ENDING_ERRORS = (KeyboardInterrupt, DownloadDbError, sqlite3.Error, OSError)


def start_run(conn: sqlite3.Connection, stage: str, argv: list[str] | None = None) -> int:
    now = time.time()
    with transaction(conn):
        cur = conn.execute(
            "INSERT INTO runs(stage, started_at, heartbeat_at, hostname, pid, argv, outcome, "
            "depends_on) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (stage, now, now, socket.gethostname(), os.getpid(),
             json.dumps(argv if argv is not None else sys.argv[1:]), RUNNING,
             DEPENDS_ON.get(stage)))
    return int(cur.lastrowid or 0)


def record_not_run(conn: sqlite3.Connection, stage: str, message: str,
                   shard: str | None = None) -> int:
    """A stage that did not run because its prerequisite failed: one finished row."""
    now = time.time()
    with transaction(conn):
        cur = conn.execute(
            "INSERT INTO runs(stage, started_at, finished_at, heartbeat_at, hostname, pid, "
            "argv, outcome, message, shard, depends_on) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (stage, now, now, now, socket.gethostname(), os.getpid(), json.dumps(sys.argv[1:]),
             PREREQUISITE_FAILED, message[:1000], shard, DEPENDS_ON.get(stage)))
    return int(cur.lastrowid or 0)


def last_run(conn: sqlite3.Connection, stage: str) -> tuple | None:
    """(run_id, outcome, message, hostname, shard) of the stage's newest run (the runs
    table is small: thousands of rows over a collection's life)."""
    return conn.execute("SELECT run_id, outcome, message, hostname, shard FROM runs "
                        "WHERE stage = ? ORDER BY started_at DESC, run_id DESC LIMIT 1",
                        (stage,)).fetchone()


def describe(stage: str, run: tuple) -> str:
    """'ingest run 4 on node7 failed: InputError: ...' for a last_run row."""
    run_id, outcome, message, host, shard = run
    what = f"{stage} {shard}" if shard else stage
    return (f"{what} run {run_id}" + (f" on {host}" if host else "")
            + f" {outcome.replace('_', ' ')}" + (f": {message}" if message else ""))


def heartbeat(conn: sqlite3.Connection, run_id: int, counts: dict | None = None) -> None:
    """Mark the run alive (call inside the caller's transaction)."""
    if counts is None:
        conn.execute("UPDATE runs SET heartbeat_at = ? WHERE run_id = ?", (time.time(), run_id))
    else:
        conn.execute("UPDATE runs SET heartbeat_at = ?, counts = ? WHERE run_id = ?",
                     (time.time(), json.dumps(counts, sort_keys=True), run_id))


def finish_run(conn: sqlite3.Connection, run_id: int, outcome: str,
               counts: dict | None = None, message: str | None = None) -> None:
    now = time.time()
    if message:  # one line, as the report and Slack show it
        message = " ".join(message.split())
    with transaction(conn):
        conn.execute(
            "UPDATE runs SET finished_at = ?, heartbeat_at = ?, outcome = ?, "
            "counts = COALESCE(?, counts), message = ? WHERE run_id = ?",
            (now, now, outcome, json.dumps(counts, sort_keys=True) if counts is not None else None,
             message, run_id))


def requests_saved(conn: sqlite3.Connection) -> int:
    """Images that got another image's file for the same URL instead of a request, over
    every download run (their counts)."""
    row = conn.execute("SELECT coalesce(sum(json_extract(counts, '$.requests_saved')), 0) "
                       "FROM runs WHERE stage = 'download'").fetchone()
    return int(row[0])


def requests_made(conn: sqlite3.Connection) -> tuple[int, int]:
    """(HTTP requests, images saved) over the download runs that counted their requests."""
    row = conn.execute("SELECT coalesce(sum(json_extract(counts, '$.requests')), 0), "
                       "coalesce(sum(json_extract(counts, '$.success')), 0) FROM runs "
                       "WHERE stage = 'download' AND json_extract(counts, '$.requests') "
                       "IS NOT NULL").fetchone()
    return int(row[0]), int(row[1])


def pid_alive(pid: int | None) -> bool:
    """Is this process id alive on this machine (a run's pid from the runs table)?"""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def download_counts(conn: sqlite3.Connection, pids: list[int], since: float) -> list[dict]:
    """The counts of this machine's download runs by these processes, started since
    ``since`` (the --processes copies of a run, for the first process to report)."""
    rows = conn.execute(
        "SELECT counts FROM runs WHERE stage = 'download' AND hostname = ? "
        "AND started_at >= ? AND pid IN (SELECT value FROM json_each(?))",
        (socket.gethostname(), since, json.dumps(pids))).fetchall()
    return [json.loads(r[0]) for r in rows if r[0]]


def ending(e: BaseException) -> tuple[str, str]:
    """(outcome, message) of a run an exception (one of ENDING_ERRORS) ended (pure)."""
    if isinstance(e, (KeyboardInterrupt, Interrupted)):
        return INTERRUPTED, "stopped by a signal"
    return FAILED, f"{type(e).__name__}: {e}"


def end_on_error(conn: sqlite3.Connection, run_id: int, counts: dict | None,
                 e: BaseException) -> NoReturn:
    """Record how an exception (one of ENDING_ERRORS) ended the run, then raise it:
    a stop signal as Interrupted with the resume hint, anything else as it came."""
    outcome, message = ending(e)
    finish_run(conn, run_id, outcome, counts, message)
    if outcome == INTERRUPTED:
        raise Interrupted("stopped by a signal; run the same command again to continue") from None
    raise e
