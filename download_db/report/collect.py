"""Status report data: one read-only pass over counters and small tables into a documented dict."""

from __future__ import annotations

import base64
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..arrays.plan import task_dbs, tasks_dir_for
from ..config import DEFAULT_INSTALL
from ..db import claims, connection, identity, runs, upkeep
from ..db import hosts as host_table
from ..db.connection import READ_ERRORS, retry_locked
from ..db.schema import SCHEMA_VERSION, schema_version
from ..db.sqlite import sqlite3
from ..db.tallies import tallies_installed
from ..errors import DatabaseError
from ..files import images
from ..states import (
    FLAG_LEGACY,
    FLAG_RAW,
    GBIF_STATUSES,
    IMAGE_STATUSES,
    has_work_left,
    is_transient,
)
from . import rates
from .arrays import add_deltas, read_task, task_summary
from .pipeline import pipeline, run_state

T = TypeVar("T")
REPORT_VERSION = 1
# A run whose heartbeat is older than this is reported as probably dead (the
# downloader beats every few seconds, the ingest once per chunk).
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
    conn = connection.open_readonly(db, busy_timeout_s=30.0)
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


def _retry(fn: Callable[[], T]) -> T:
    """Retry a read on errors a busy or network filesystem produces transiently."""
    return retry_locked(fn, delays=READ_RETRIES, errors=READ_ERRORS)


def collect(conn: sqlite3.Connection, *, db: Path | None = None, now: float | None = None,
            tasks: list[Path] | None = None) -> dict:
    """Everything the report shows, from one read transaction per database (a
    consistent snapshot of each). ``tasks``: array task databases not merged yet
    (default: those beside ``db``); their progress is added to the main DB's."""
    now = time.time() if now is None else now
    if tasks is None:
        tasks = task_dbs(tasks_dir_for(db)) if db is not None else []
    parts = [_retry(lambda p=p: read_task(p)) for p in tasks]

    def read() -> dict:
        return _snapshot(conn, lambda c, _: _collect(c, now, [p for p in parts if p]), None)
    data = _retry(read)
    data["db"] = str(db.resolve()) if db is not None else None
    _example_thumbs(data["identity"], db)
    data["array"] = {"tasks_dir": str(tasks_dir_for(db)) if db is not None else None,
                     "tasks": [task_summary(p, now, run_state) for p in parts if p]}
    return data


def _snapshot(conn: sqlite3.Connection, fn, arg):
    conn.execute("BEGIN")
    try:
        return fn(conn, arg)
    finally:
        conn.execute("ROLLBACK")


def _collect(conn: sqlite3.Connection, now: float, tasks: list[dict]) -> dict:
    hosts = host_table.names(conn)
    tally = conn.execute("SELECT host_id, status, error_type, attempts, parked, n, bytes "
                         "FROM image_tally WHERE n <> 0").fetchall()
    if tasks:
        tally = add_deltas(tally, [d for t in tasks for d in t["delta"]])
    images = _images(conn, tally)
    images["in_flight"] += sum(t["in_flight"] for t in tasks)
    images["from_gbif_cache"], images["not_in_gbif_cache"] = claims.rescue_counts(conn)
    activity = _activity(conn, now, tasks)
    per = _per_host(tally)
    states = _host_rows(conn, tasks)
    return {
        "report_version": REPORT_VERSION,
        "generated_at": now,
        "schema_version": SCHEMA_VERSION,
        "pipeline": pipeline(conn, now, tasks),
        "gbif_ids": _gbif(conn),
        "images": images,
        "throughput": rates.throughput(activity, now, images["work_left"]),
        "failures": _failures(tally),
        "retries": _retries(tally),
        "non_image_by_host": _non_image(conn, per, hosts),
        "top_failing_hosts": _top_failing(per, hosts),
        "hosts_cooling_down": _cooling(states, now, hosts),
        "hosts_quarantined": _quarantined(states, per, hosts),
        "host_limits": _limits(conn, tasks, per, hosts),
        "requests": dict(zip(("requests", "saved"), runs.requests_made(conn), strict=True)),
        "history": rates.history(activity),
        "verify": _verify(conn),
        "identity": identity.report(conn),
        "notes": NOTES,
    }


def _example_thumbs(ident: dict, db: Path | None) -> None:
    """A small inline copy of each placeholder's example file for the HTML page when the
    images sit beside the database (the default layout); None where they do not."""
    root = db.resolve().parent / DEFAULT_INSTALL if db is not None else None
    for p in ident["placeholders"]:
        p["example_thumb"] = None
        if root is not None and p["example"]:
            try:
                data = images.thumbnail((root / p["example"]).read_bytes())
            except (OSError, images.ImageError):
                continue
            p["example_thumb"] = "data:image/jpeg;base64," + base64.b64encode(data).decode()


def _verify(conn: sqlite3.Connection) -> dict:
    """When the saved files were last checked by verify (two index seeks)."""
    never, oldest = upkeep.oldest_check(conn)
    return {"any_never_checked": never, "oldest_check": oldest}


def _pct(part: int, total: int) -> float:
    return round(100.0 * part / total, 2) if total else 0.0


def _gbif(conn: sqlite3.Connection) -> dict:
    by = dict.fromkeys(GBIF_STATUSES, 0)
    by.update(conn.execute("SELECT status, n FROM gbif_tally"))
    total = sum(by.values())
    return {"total": total, "by_status": by,
            "percent": {k: _pct(v, total) for k, v in by.items()},
            "in_queue": by["pending"] + by["partial"]}


def _images(conn: sqlite3.Connection, tally: list) -> dict:
    by = dict.fromkeys(IMAGE_STATUSES, 0)
    raw = legacy = exhausted = saved_bytes = work_left = 0
    for _h, status, etype, attempts, parked, n, nbytes in tally:
        by[status] = by.get(status, 0) + n
        work_left += n if has_work_left(status, attempts, parked=parked) else 0
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
            "work_left": work_left,
            "budget_exhausted": exhausted, "in_flight": in_flight, "raw_unprocessed": raw,
            "legacy_unverified": legacy, "bytes_saved": saved_bytes}


def _activity(conn: sqlite3.Connection, now: float, tasks: list[dict],
              days: int = 14) -> dict[int, list[int]]:
    """minute -> [attempts, successes, failures, bytes] over the last ``days`` days,
    the main DB's plus every unmerged task's."""
    since = int((now - days * 86400) // 60)
    out: dict[int, list[int]] = {}
    rows = conn.execute("SELECT minute, attempts, successes, failures, bytes FROM activity "
                        "WHERE minute >= ?", (since,)).fetchall()
    for t in tasks:
        rows += [r for r in t["activity"] if r[0] >= since]
    for minute, *vals in rows:
        acc = out.setdefault(minute, [0, 0, 0, 0])
        for i, v in enumerate(vals):
            acc[i] += v
    return out


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
    for hid, status, etype, attempts, parked, n, _b in tally:
        h = out[hid]
        h[status] += n
        if etype in NON_IMAGE:
            h["non_image"] += n
            h[f"non_image:{etype}"] += n
        if has_work_left(status, attempts, parked=parked):
            h["work_left"] += n
    return out


def _non_image(conn: sqlite3.Connection, per: dict[int, dict[str, int]],
               hosts: dict[int, str]) -> list[dict]:
    top = sorted((h for h in per.items() if h[1]["non_image"]),
                 key=lambda kv: -kv[1]["non_image"])[:TOP]
    samples = host_table.samples(conn, [hid for hid, _c in top])
    return [{"host": hosts.get(hid, str(hid)), "count": c["non_image"],
             "by_type": {k.split(":", 1)[1]: v for k, v in c.items()
                         if k.startswith("non_image:")},
             "sample": (samples.get(hid) or "")[:200]}
            for hid, c in top]


def _top_failing(per: dict[int, dict[str, int]], hosts: dict[int, str]) -> list[dict]:
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


def _host_rows(conn: sqlite3.Connection, tasks: list[dict]) -> dict[int, tuple]:
    """Per host, the newest politeness state among the main DB and the tasks."""
    rows = {r[0]: r for r in host_table.troubled(conn)}
    for t in tasks:
        for r in t["hosts"]:
            if r[0] not in rows or (r[8] or 0) > (rows[r[0]][8] or 0):
                rows[r[0]] = r
    return rows


def _limits(conn: sqlite3.Connection, tasks: list[dict], per: dict[int, dict[str, int]],
            hosts: dict[int, str]) -> list[dict]:
    """Each adaptive host's limit as last recorded (the newest of the main DB and the
    tasks), hosts with the most work left first."""
    rows = {r[0]: r for r in host_table.limits(conn)}
    for t in tasks:
        for r in t["hosts"]:
            if len(r) > 9 and r[9] is not None and (r[8] or 0) >= (rows.get(r[0], r)[8] or 0):
                rows[r[0]] = r
    out = [{"host": hosts.get(hid, str(hid)), "limit": r[9], "set_at": r[8],
            "work_left": per.get(hid, {}).get("work_left", 0)} for hid, r in rows.items()]
    return sorted(out, key=lambda h: (-h["work_left"], h["host"]))[:100]


def _cooling(states: dict[int, tuple], now: float, hosts: dict[int, str]) -> list[dict]:
    rows = [r for r in states.values() if (r[1] or 0) > now or r[3] != "closed"]
    rows.sort(key=lambda r: -(r[1] or 0))
    return [{"host": hosts.get(r[0], str(r[0])), "until": r[1], "reason": r[2],
             "breaker": r[3]} for r in rows[:100]]


def _quarantined(states: dict[int, tuple], per: dict[int, dict[str, int]],
                 hosts: dict[int, str]) -> list[dict]:
    rows = sorted((r for r in states.values() if r[4]), key=lambda r: r[5] or 0)
    return [{"host": hosts.get(r[0], str(r[0])), "since": r[5], "last_error": r[6],
             "failed": per[r[0]]["failed_permanent"] + per[r[0]]["failed_transient"],
             "success": per[r[0]]["success"], "work_left": per[r[0]]["work_left"]}
            for r in rows]
