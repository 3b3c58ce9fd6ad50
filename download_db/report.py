"""Status report data: one read-only pass over counters and small tables into a documented dict."""

from __future__ import annotations

import json
import socket
import time
from collections import defaultdict
from pathlib import Path

from . import runs
from ._sqlite import sqlite3
from .errors import DatabaseError
from .fetch import is_transient
from .schema import (
    FLAG_LEGACY,
    FLAG_RAW,
    GBIF_STATUSES,
    IMAGE_STATUSES,
    SCHEMA_VERSION,
    connect,
    schema_version,
    tallies_installed,
)

REPORT_VERSION = 1
# A run whose heartbeat is older than this is reported as probably dead (the
# downloader beats every few seconds, the ingest once per chunk).
STALE_AFTER = 600.0
NON_IMAGE = ("invalid_content_type", "not_an_image", "placeholder_image")
TOP = 20
# The report tolerates transient read errors of shared filesystems this often.
READ_RETRIES = (0.5, 2.0, 5.0)

NOTES = {
    "pending": "image not tried yet, or given back untried (host cooling down, run stopped)",
    "success": "file saved under the image root; file_path, size, sha256 recorded",
    "failed_transient": "may work later (timeouts, 5xx, 429, resets): retried with backoff "
                        "until the attempts budget (--max-attempts) is spent",
    "failed_permanent": "retrying will not help (404/403, not an image, placeholder, too large)",
    "budget exhausted": "failed_transient with every attempt used: parked until a run with a "
                        "larger --max-attempts",
    FLAG_RAW: "success, but a camera raw kept as is: needs conversion",
    FLAG_LEGACY: "success adopted from the older downloader's processed_ids.txt, unverified",
    "gbifID done": "every distinct image of the gbifID succeeded",
    "gbifID partial": "some of its images still have work left; some were tried",
    "gbifID failed": "nothing left to try, not every image succeeded",
    "gbifID pending": "none of its images tried yet (figures as of the last finalize or result)",
}


def open_readonly(db: Path) -> sqlite3.Connection:
    """The report's only way in: mode=ro by construction, never created or migrated."""
    if not db.is_file():
        raise DatabaseError(f"database not found: {db}")
    conn = connect(db, readonly=True, busy_timeout_s=30.0)
    version = _retry(lambda: schema_version(conn))
    if version == 0:
        raise DatabaseError(f"{db} is not a download database (built by init_download_db.py?)")
    if version > SCHEMA_VERSION:
        raise DatabaseError(f"{db} has schema v{version}, newer than this program "
                            f"(v{SCHEMA_VERSION}); upgrade the program")
    if version < SCHEMA_VERSION or not tallies_installed(conn):
        raise DatabaseError(f"{db} has schema v{version} without the report's counters; run "
                            "init_download_db.py --finalize-only (or image_install_db.py) once to "
                            "upgrade it, or wait for its build to finish")
    return conn


def _retry(fn):
    """Retry a read on errors a busy or network filesystem produces transiently."""
    for delay in (*READ_RETRIES, None):
        try:
            return fn()
        except sqlite3.OperationalError as e:
            msg = str(e).lower()
            if delay is None or not any(s in msg for s in ("locked", "busy", "disk i/o")):
                raise
            time.sleep(delay)
    return None


def collect(conn: sqlite3.Connection, *, db: Path | None = None, now: float | None = None) -> dict:
    """Everything the report shows, from one read transaction (a consistent snapshot)."""
    now = time.time() if now is None else now

    def read() -> dict:
        conn.execute("BEGIN")
        try:
            return _collect(conn, now)
        finally:
            conn.execute("ROLLBACK")
    data = _retry(read)
    data["db"] = str(db.resolve()) if db is not None else None
    return data


def _collect(conn: sqlite3.Connection, now: float) -> dict:
    hosts = {hid: name for hid, name in conn.execute("SELECT host_id, host FROM hosts")}
    tally = conn.execute("SELECT host_id, status, error_type, attempts, parked, n, bytes "
                         "FROM image_tally WHERE n <> 0").fetchall()
    images = _images(conn, tally)
    return {
        "report_version": REPORT_VERSION,
        "generated_at": now,
        "schema_version": SCHEMA_VERSION,
        "pipeline": _pipeline(conn, now),
        "gbif_ids": _gbif(conn),
        "images": images,
        "throughput": _throughput(conn, now, images["work_left"]),
        "failures": _failures(tally),
        "retries": _retries(tally),
        "non_image_by_host": _non_image(conn, tally, hosts),
        "top_failing_hosts": _top_failing(conn, tally, hosts),
        "hosts_cooling_down": _cooling(conn, now),
        "hosts_quarantined": _quarantined(conn, tally),
        "history": _history(conn, now),
        "notes": NOTES,
    }


def _pct(part: int, total: int) -> float:
    return round(100.0 * part / total, 2) if total else 0.0


def _pipeline(conn: sqlite3.Connection, now: float) -> dict:
    cols = ("run_id", "stage", "started_at", "finished_at", "heartbeat_at", "hostname", "pid",
            "outcome", "counts", "message")
    rows = [dict(zip(cols, r, strict=True)) for r in conn.execute(
        f"SELECT {', '.join(cols)} FROM runs ORDER BY run_id DESC LIMIT 200")]
    for r in rows:
        r["counts"] = json.loads(r["counts"]) if r["counts"] else None
        r["state"] = _run_state(r, now)
    running = [r for r in rows if r["state"] == "running"]
    dead = [r for r in rows if r["state"] in ("crashed", "no heartbeat")]
    last = rows[0] if rows else None
    if last is None:
        state, headline = "empty", "nothing ingested yet: run init_download_db.py --multimedia ..."
    elif running:
        where = ", ".join(sorted({f"{r['hostname']}:{r['pid']}" for r in running}))
        stages = "/".join(sorted({r["stage"] for r in running}))
        state = "running"
        headline = f"RUNNING: {len(running)} {stages} run(s) on {where}"
        if dead:
            headline += f"; {len(dead)} earlier run(s) died without finishing"
    elif last["state"] in ("crashed", "no heartbeat", "failed", "interrupted"):
        state = last["state"]
        headline = (f"{last['state'].upper()}: the last run ({last['stage']}, run {last['run_id']}"
                    f" on {last['hostname']}) {_ended(last)}")
        if last.get("message"):
            headline += f": {last['message']}"
    else:
        state = "idle"
        headline = f"idle: the last run ({last['stage']}, run {last['run_id']}) finished ok"
    return {"state": state, "headline": headline, "running": running,
            "last_by_stage": _last_by_stage(rows), "recent": rows[:10]}


def _run_state(r: dict, now: float) -> str:
    if r["outcome"] != runs.RUNNING:
        return r["outcome"]
    if r["hostname"] == socket.gethostname() and not runs.pid_alive(r["pid"]):
        return "crashed"
    if (r["heartbeat_at"] or r["started_at"]) < now - STALE_AFTER:
        return "no heartbeat"
    return "running"


def _ended(r: dict) -> str:
    return {"crashed": "died without finishing (killed or crashed)",
            "no heartbeat": "stopped sending heartbeats (killed, crashed, or its node is down)",
            "failed": "failed", "interrupted": "was stopped by a signal (resumable)"}[r["state"]]


def _last_by_stage(rows: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for r in rows:
        out.setdefault(r["stage"], r)
    return out


def _gbif(conn: sqlite3.Connection) -> dict:
    by = dict.fromkeys(GBIF_STATUSES, 0)
    by.update(conn.execute("SELECT status, n FROM gbif_tally"))
    total = sum(by.values())
    return {"total": total, "by_status": by,
            "percent": {k: _pct(v, total) for k, v in by.items()},
            "in_queue": by["pending"] + by["partial"]}


def _images(conn: sqlite3.Connection, tally: list) -> dict:
    by = dict.fromkeys(IMAGE_STATUSES, 0)
    raw = legacy = exhausted = saved_bytes = 0
    for _h, status, etype, _a, parked, n, nbytes in tally:
        by[status] = by.get(status, 0) + n
        if status == "success":
            saved_bytes += nbytes
            raw += n if etype == FLAG_RAW else 0
            legacy += n if etype == FLAG_LEGACY else 0
        elif status == "failed_transient" and parked:
            exhausted += n
    total = sum(by.values())
    in_flight = conn.execute(
        "SELECT count(*) FROM images WHERE claimed_by IS NOT NULL").fetchone()[0]
    return {"total": total, "by_status": by, "percent": {k: _pct(v, total) for k, v in by.items()},
            "work_left": by["pending"] + by["failed_transient"] - exhausted,
            "budget_exhausted": exhausted, "in_flight": in_flight, "raw_unprocessed": raw,
            "legacy_unverified": legacy, "bytes_saved": saved_bytes}


def _throughput(conn: sqlite3.Connection, now: float, work_left: int) -> dict:
    def window(seconds: int) -> dict:
        row = conn.execute("SELECT coalesce(sum(attempts), 0), coalesce(sum(successes), 0), "
                           "coalesce(sum(failures), 0), coalesce(sum(bytes), 0) FROM activity "
                           "WHERE minute >= ?", (int((now - seconds) // 60),)).fetchone()
        hours = seconds / 3600
        return {"attempts": row[0], "successes": row[1], "failures": row[2], "bytes": row[3],
                "successes_per_hour": round(row[1] / hours, 1),
                "attempts_per_hour": round(row[0] / hours, 1)}
    hour, day = window(3600), window(86400)
    basis = "last hour" if hour["attempts"] else "last day" if day["attempts"] else None
    rate = (hour if hour["attempts"] else day)["attempts_per_hour"]
    eta = round(work_left / rate * 3600) if rate and work_left else (0 if not work_left else None)
    return {"last_hour": hour, "last_day": day, "eta_seconds": eta, "eta_basis": basis}


def _failures(tally: list) -> list[dict]:
    agg: dict[tuple[str, str], int] = defaultdict(int)
    for _h, status, etype, _a, _p, n, _b in tally:
        if status.startswith("failed"):
            agg[(etype or "(none)", status)] += n
    return [{"error_type": e, "status": s, "retryable": s == "failed_transient" or
             is_transient(e), "count": n}
            for (e, s), n in sorted(agg.items(), key=lambda kv: -kv[1])]


def _retries(tally: list) -> list[dict]:
    agg: dict[tuple[int, int], int] = defaultdict(int)
    for _h, status, _e, attempts, parked, n, _b in tally:
        if status == "failed_transient":
            agg[(attempts, parked)] += n
    return [{"attempts": a, "budget_exhausted": bool(p), "count": n}
            for (a, p), n in sorted(agg.items())]


def _per_host(tally: list) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for hid, status, etype, _a, parked, n, _b in tally:
        h = out[hid]
        h[status] += n
        if etype in NON_IMAGE:
            h["non_image"] += n
            h[f"non_image:{etype}"] += n
        if status == "failed_transient" and not parked:
            h["work_left"] += n
        elif status == "pending":
            h["work_left"] += n
    return out


def _non_image(conn: sqlite3.Connection, tally: list, hosts: dict[int, str]) -> list[dict]:
    per = _per_host(tally)
    top = sorted((h for h in per.items() if h[1]["non_image"]), key=lambda kv: -kv[1]["non_image"])
    out = []
    for hid, c in top[:TOP]:
        sample = conn.execute("SELECT sample_detail FROM hosts WHERE host_id = ?",
                              (hid,)).fetchone()
        out.append({"host": hosts.get(hid, str(hid)), "count": c["non_image"],
                    "by_type": {k.split(":", 1)[1]: v for k, v in c.items()
                                if k.startswith("non_image:")},
                    "sample": (sample[0] or "")[:200] if sample else ""})
    return out


def _top_failing(conn: sqlite3.Connection, tally: list, hosts: dict[int, str]) -> list[dict]:
    per = _per_host(tally)
    rows = []
    for hid, c in per.items():
        failed = c["failed_permanent"] + c["failed_transient"]
        if not failed:
            continue
        tried = failed + c["success"]
        rows.append({"host": hosts.get(hid, str(hid)), "failed": failed,
                     "failed_permanent": c["failed_permanent"],
                     "failed_transient": c["failed_transient"], "success": c["success"],
                     "work_left": c["work_left"],
                     "failure_rate": round(failed / tried, 4) if tried else 0.0})
    rows.sort(key=lambda r: (-r["failed"], r["host"]))
    return rows[:TOP]


def _cooling(conn: sqlite3.Connection, now: float) -> list[dict]:
    return [{"host": h, "until": until, "reason": reason, "breaker": breaker}
            for h, until, reason, breaker in conn.execute(
                "SELECT host, cooldown_until, cooldown_reason, breaker_state FROM hosts "
                "WHERE cooldown_until > ? OR breaker_state <> 'closed' "
                "ORDER BY cooldown_until DESC LIMIT 100", (now,))]


def _quarantined(conn: sqlite3.Connection, tally: list) -> list[dict]:
    per = _per_host(tally)
    return [{"host": h, "since": since, "last_error": err, "failed":
             per[hid]["failed_permanent"] + per[hid]["failed_transient"],
             "success": per[hid]["success"], "work_left": per[hid]["work_left"]}
            for hid, h, since, err in conn.execute(
                "SELECT host_id, host, quarantined_at, last_error FROM hosts "
                "WHERE quarantined = 1 ORDER BY quarantined_at")]


def _history(conn: sqlite3.Connection, now: float, days: int = 14) -> list[dict]:
    """Hourly finished attempts over the last ``days`` days (for the chart)."""
    return [{"hour": h * 3600, "attempts": a, "successes": s, "failures": f, "bytes": b}
            for h, a, s, f, b in conn.execute(
                "SELECT minute / 60, sum(attempts), sum(successes), sum(failures), sum(bytes) "
                "FROM activity WHERE minute >= ? GROUP BY minute / 60 ORDER BY 1",
                (int((now - days * 86400) // 60),))]
