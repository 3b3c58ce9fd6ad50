"""Report input from array tasks not merged yet: their progress since their database was made."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..db import hosts
from ..db.connection import open_readonly
from ..db.sqlite import sqlite3
from ..states import has_work_left


def read_task(path: Path) -> dict | None:
    """One task database's progress since it was made (it may vanish: merged)."""
    try:
        conn = open_readonly(path)
    except sqlite3.OperationalError:
        return None
    try:
        conn.execute("BEGIN")
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        key = "host_id, status, error_type, attempts, parked"
        now_t = {r[:5]: r[5:] for r in conn.execute(f"SELECT {key}, n, bytes FROM image_tally")}
        base = {r[:5]: r[5:] for r in conn.execute(f"SELECT {key}, n, bytes FROM "
                                                   "image_tally_base")}
        delta = []
        for k in now_t.keys() | base.keys():
            n1, b1 = now_t.get(k, (0, 0))
            n0, b0 = base.get(k, (0, 0))
            if (n1 - n0, b1 - b0) != (0, 0):
                delta.append((*k, n1 - n0, b1 - b0))
        cols = ("run_id", "stage", "started_at", "finished_at", "heartbeat_at", "hostname",
                "pid", "outcome", "counts", "message")
        run_rows = [dict(zip(cols, r, strict=True)) for r in conn.execute(
            f"SELECT {', '.join(cols)} FROM runs ORDER BY run_id DESC LIMIT 20")]
        return {
            "path": str(path), "shard": meta.get("task_shard"), "delta": delta,
            "images": sum(v[0] for v in base.values()),
            "work_left": sum(n for (_h, s, _e, a, p), (n, _b) in now_t.items()
                             if has_work_left(s, a, parked=p)),
            "runs": run_rows,
            "activity": conn.execute("SELECT * FROM activity").fetchall(),
            "hosts": hosts.touched(conn),
            "in_flight": conn.execute("SELECT count(*) FROM images "
                                      "WHERE claimed_by IS NOT NULL").fetchone()[0],
        }
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return None  # being merged and deleted right now
        raise
    finally:
        conn.close()


def task_summary(t: dict, now: float, run_state: Callable[[dict, float], str]) -> dict:
    for r in t["runs"]:
        r["counts"] = json.loads(r["counts"]) if isinstance(r["counts"], str) else r["counts"]
        r["state"] = run_state(r, now)
    last = t["runs"][0] if t["runs"] else None
    return {"shard": t["shard"], "db": t["path"], "images": t["images"],
            "work_left": t["work_left"], "state": last["state"] if last else "not started",
            "host": last["hostname"] if last else None,
            "heartbeat_at": last["heartbeat_at"] if last else None}


def add_deltas(tally: list, deltas: list) -> list:
    acc: dict[tuple, list[int]] = {}
    for *key, n, b in list(tally) + deltas:
        v = acc.setdefault(tuple(key), [0, 0])
        v[0] += n
        v[1] += b
    return [(*k, n, b) for k, (n, b) in acc.items() if n]


