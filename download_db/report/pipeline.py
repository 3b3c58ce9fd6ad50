"""The report's PIPELINE section: each stage's last run from the runs table, first and loud."""

from __future__ import annotations

import json
import socket

from ..db import runs
from ..db.sqlite import sqlite3
from ..states import ALIVE_WINDOW, DEPENDS_ON, PIPELINE_ORDER, READ_ONLY_STAGES

COLS = ("run_id", "stage", "started_at", "finished_at", "heartbeat_at", "hostname", "pid",
        "outcome", "counts", "message", "shard", "depends_on")
# How bad a run's state is, for the one run shown for an array's several tasks.
_WORST = ("failed", "prerequisite_failed", "crashed", "no heartbeat", "running", "interrupted",
          "ok")
_LOUD = ("crashed", "no heartbeat", "failed", "interrupted")


def run_state(r: dict, now: float) -> str:
    """A run's outcome, or for a run still marked running: crashed, no heartbeat, running."""
    if r["outcome"] != runs.RUNNING:
        return r["outcome"]
    if r["hostname"] == socket.gethostname() and not runs.pid_alive(r["pid"]):
        return "crashed"
    if (r["heartbeat_at"] or r["started_at"]) < now - ALIVE_WINDOW:
        return "no heartbeat"
    return "running"


def pipeline(conn: sqlite3.Connection, now: float, tasks: list[dict]) -> dict:
    """State, headline, runs alive now, each stage's last run (in pipeline order), the
    stages not run because a prerequisite failed, and the 10 newest runs. The headline
    judges the newest run, passing over ok runs of stages that only read (an export
    after a download that saved nothing must not turn NOTHING SAVED into idle)."""
    rows = [dict(zip(COLS, r, strict=True)) for r in conn.execute(
        f"SELECT {', '.join(COLS)} FROM runs ORDER BY run_id DESC LIMIT 200")]
    for t in tasks:  # runs of unmerged array tasks, newest first among all
        rows += [{**r, "shard": t["shard"], "stage": "download", "unmerged": True,
                  "depends_on": DEPENDS_ON["download"]} for r in t["runs"]]
    rows.sort(key=lambda r: -(r["started_at"] or 0))
    for r in rows:
        r["counts"] = json.loads(r["counts"]) if isinstance(r["counts"], str) else r["counts"]
        r["state"] = run_state(r, now)
        r["duration_seconds"] = _duration(r, now)
    running = [r for r in rows if r["state"] == "running"]
    dead = [r for r in rows if r["state"] in ("crashed", "no heartbeat")]
    last = next((r for r in rows if r["stage"] not in READ_ONLY_STAGES or r["state"] != "ok"),
                rows[0] if rows else None)
    stages = _stages(rows)
    if last is None:
        state, headline = "empty", "nothing ingested yet: run init_download_db.py --multimedia ..."
    elif running:
        where = ", ".join(sorted({f"{r['hostname']}:{r['pid']}" for r in running}))
        names = "/".join(sorted({r["stage"] for r in running}))
        state = "running"
        headline = f"RUNNING: {len(running)} {names} run(s) on {where}"
        if dead:
            headline += f"; {len(dead)} earlier run(s) died without finishing"
    elif last["state"] == runs.PREREQUISITE_FAILED:
        state = last["state"]
        headline = (f"NOT RUN: {last['stage']} (run {last['run_id']} on {last['hostname']}) did "
                    f"not run because a stage it depends on failed: {last['message'] or '?'}")
    elif last["state"] in _LOUD:
        state = last["state"]
        headline = (f"{state.replace('_', ' ').upper()}: the last run ({last['stage']}, run "
                    f"{last['run_id']} on {last['hostname']}) {_ended(last)}")
        if last.get("message"):
            headline += f": {last['message']}"
    elif _saved_nothing(last):
        c = last["counts"] or {}
        state = "nothing saved"
        headline = (f"NOTHING SAVED: the last run ({last['stage']}, run {last['run_id']} on "
                    f"{last['hostname']}) ended, but all its "
                    f"{_failed(c):,} attempts failed: the network or the hosts look down "
                    "(see FAILURES BY TYPE: dns_error, connection_broken or proxy_error on "
                    "every host means the node's network)")
    else:
        state = "idle"
        headline = f"idle: the last run ({last['stage']}, run {last['run_id']}) finished ok"
    return {"state": state, "headline": headline, "running": running, "stages": stages,
            "prerequisite_failed": [s["stage"] for s in stages
                                    if s["state"] == runs.PREREQUISITE_FAILED],
            "last_by_stage": {s["stage"]: s for s in stages}, "recent": rows[:10]}


def _duration(r: dict, now: float) -> float | None:
    end = r["finished_at"] or (now if r["state"] == "running" else None)
    return round(end - r["started_at"], 1) if end and r["started_at"] else None


def _stages(rows: list[dict]) -> list[dict]:
    """The last run of each stage, pipeline stages first. For the download, the worst
    of the unmerged array tasks' last runs when one of them did not end well: a failed
    task is what holds the pipeline up, even if another task ran later."""
    last: dict[str, dict] = {}
    tasks: dict[str, dict] = {}
    for r in rows:  # newest first
        last.setdefault(r["stage"], r)
        if r.get("unmerged"):
            tasks.setdefault(r["shard"], r)
    if tasks:
        worst = min(tasks.values(), key=lambda r: _WORST.index(r["state"])
                    if r["state"] in _WORST else len(_WORST))
        if worst["state"] not in ("ok", "running", "interrupted"):
            last["download"] = worst
    order = [s for s in PIPELINE_ORDER if s in last]
    order += [s for s in last if s not in PIPELINE_ORDER]
    return [{**last[s], "stage": s} for s in order]


def _failed(c: dict) -> int:
    return int(c.get("failed_transient", 0) or 0) + int(c.get("failed_permanent", 0) or 0)


def _saved_nothing(r: dict) -> bool:
    """A download run that ended with every attempt failed: not a run that "finished ok"."""
    c = r["counts"] if isinstance(r["counts"], dict) else {}
    return r["stage"] == "download" and not c.get("success") and _failed(c) > 0


def _ended(r: dict) -> str:
    return {"crashed": "died without finishing (killed or crashed)",
            "no heartbeat": "stopped sending heartbeats (killed, crashed, or its node is down)",
            "failed": "failed", "interrupted": "was stopped by a signal (resumable)",
            }[r["state"]]
