#!/usr/bin/env python3
"""Start-up benchmark on a big database: time to first claim, time to stop after SIGTERM, and
the start-up of merge, check and report, against baselines measured in the same run.

    python bench/startup.py --db /var/tmp/big.db --build 52000000 --workdir /var/tmp/startup

--build makes the database with bench/bigdb.py first if it is missing (52M images takes about
5 minutes here; the 113M of the issue takes too long on this machine). Baselines:

* the statements a downloader used to run at every start (park and re-open retries by walking
  the work list, count it through its index; look for expired leases among a big host's due
  rows at every claim), timed on the same database inside a transaction that is rolled back,
  each cut off after --cap seconds (a progress handler, like the product's own stop);
* for whole processes, `python -m download_db --version`: the interpreter and import floor.

The downloader runs are real processes (`gbif-download-db download --max-images 500
--max-runtime 120`); their hosts do not resolve here, which does not matter before the first
claim. A run with a smaller --max-attempts has real parking to do, and gets its SIGTERM
in the middle of it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bigdb  # noqa: E402

from download_db import states  # noqa: E402
from download_db.db import claims, tallies  # noqa: E402
from download_db.db.connection import connect, open_readonly, transaction  # noqa: E402

# What a downloader ran at every start before (claims.py and download/stage.py at 0935c58).
OLD = {
    "park retries (budget unchanged)":
        f"UPDATE images SET next_attempt_at = {states.EXHAUSTED} WHERE {states.EXHAUSTED_WHERE} "
        f"AND host_id IN (SELECT host_id FROM hosts) AND NOT {states.WORK_LEFT_SQL}",
    "re-open retries (budget unchanged)":
        f"UPDATE images SET next_attempt_at = last_attempt_at WHERE {states.TODO_WHERE} "
        f"AND host_id IN (SELECT host_id FROM hosts) AND {states.PARKED} "
        f"AND {states.WORK_LEFT_SQL}",
    "count the work left":
        f"SELECT count(*) FROM images INDEXED BY images_todo WHERE {states.EXHAUSTED_WHERE}",
    "expired leases, per claim (biggest host)":
        f"SELECT image_id FROM images INDEXED BY images_todo WHERE {states.TODO_WHERE} "
        "AND host_id = :host_id AND next_attempt_at <= :now AND claimed_by IS NOT NULL "
        "ORDER BY next_attempt_at LIMIT :n",
}


def _timed(conn, fn, cap: float) -> float | None:
    """Seconds fn took inside a rolled-back transaction; None when cut off at cap."""
    t0 = time.monotonic()
    conn.set_progress_handler(lambda: time.monotonic() - t0 > cap, 10_000)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            fn()
        finally:
            if conn.in_transaction:  # an interrupted statement has rolled it back
                conn.execute("ROLLBACK")
    except Exception as e:  # noqa: BLE001
        if "interrupted" in str(e):
            return None
        raise
    finally:
        conn.set_progress_handler(None, 0)
    return time.monotonic() - t0


def _fmt(s: float | None, cap: float) -> str:
    return f">{cap:.0f} s (cut off)" if s is None else f"{s:8.3f} s"


def statements(db: Path, cap: float) -> None:
    conn = connect(db)
    host = conn.execute("SELECT host_id FROM image_tally WHERE status = 'pending' "
                        "GROUP BY host_id ORDER BY sum(n) DESC LIMIT 1").fetchone()[0]
    args = {"max_attempts": 4, "host_id": host, "now": bigdb.NOW + 10**7, "n": 64}
    new = {
        "park retries (budget unchanged)": lambda: claims.park_exhausted(conn, 4),
        "re-open retries (budget unchanged)": lambda: claims.reopen_exhausted(conn, 4),
        "count the work left": lambda: tallies.work_left(conn),
        "expired leases, per claim (biggest host)":
            lambda: conn.execute(claims._EXPIRED, args).fetchall(),
    }
    print(f"\nstart-up statements (old: walks the work list; new: what ships), cap {cap:.0f} s")
    for name, sql in OLD.items():
        old = _timed(conn, lambda sql=sql: conn.execute(sql, args).fetchall(), cap)
        now = _timed(conn, new[name], cap)
        ratio = (f"{(old or cap) / max(now, 1e-6):,.0f}x" + ("+" if old is None else "")
                 if now is not None else "-")
        print(f"  {name:<42} old {_fmt(old, cap)}   new {_fmt(now, cap)}   {ratio}")
    conn.close()


def _proc(args: list[str], work: Path) -> subprocess.Popen:
    env = {**os.environ, "SLACK_WEBHOOK_URL": "", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "download_db", *args], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _first_claim(db: Path, p: subprocess.Popen, t0: float, limit: float) -> float | None:
    """Seconds from the start until process p holds a claim (its token in images_claimed)."""
    token = None
    me = socket.gethostname()
    while time.monotonic() - t0 < limit and p.poll() is None:
        try:
            ro = open_readonly(db, busy_timeout_s=1.0)
            try:
                if token is None:
                    row = ro.execute("SELECT run_id FROM runs WHERE stage = 'download' AND "
                                     "pid = ? ORDER BY run_id DESC", (p.pid,)).fetchone()
                    token = f"{me}:{p.pid}:{row[0]}" if row else None
                if token and ro.execute("SELECT 1 FROM images INDEXED BY images_claimed "
                                        "WHERE claimed_by = ? LIMIT 1", (token,)).fetchone():
                    return time.monotonic() - t0
            finally:
                ro.close()
        except Exception:  # noqa: BLE001 - a busy database only delays the look
            pass
        time.sleep(0.02)
    return None


def _stop(p: subprocess.Popen) -> tuple[float, int]:
    t = time.monotonic()
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=600)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    return time.monotonic() - t, p.returncode


def downloads(db: Path, work: Path) -> None:
    base = ["download", "--db", str(db), "--install-path", str(work / "images"),
            "--lock-dir", str(work / "locks"), "--max-images", "500", "--max-runtime", "120",
            "--threads", "8", "--no-bar", "--wait-for-retries", "0"]
    # the rows as a budget of 4 leaves them (an earlier bench run may have stopped
    # between a shrink and the grow back), so that the first start is the usual one
    conn = connect(db)
    with transaction(conn):
        claims.reopen_exhausted(conn, 4)
        claims.park_exhausted(conn, 4)
    conn.close()
    print("\ndownloader processes (--max-images 500 --max-runtime 120)")
    for label, extra, when in (
            ("same budget as the rows (4)", [], "claim"),
            ("budget shrank to 3: parks retries", ["--max-attempts", "3"], 1.0),
            ("budget shrank to 3: parks retries", ["--max-attempts", "3"], "claim"),
            ("budget grew back to 4: re-opens", ["--max-attempts", "4"], "claim")):
        t0 = time.monotonic()
        p = _proc(base + extra, work)
        if when == "claim":
            first = _first_claim(db, p, t0, 900)
            what = (f"first claim after {first:6.2f} s" if first is not None
                    else f"no claim (exit {p.poll()})")
        else:
            time.sleep(when)
            what = f"SIGTERM at {when:.1f} s (in start-up)"
        stop, code = _stop(p)
        tail = (p.stdout.read() if p.stdout else "").strip().splitlines()[-1:]
        print(f"  {label:<36} {what:<32} stopped {stop:5.2f} s after SIGTERM "
              f"(exit {code}) {tail[0][:70] if tail else ''}", flush=True)


def _wall(args: list[str], work: Path) -> tuple[float, int]:
    t = time.monotonic()
    p = _proc(args, work)
    p.communicate(timeout=1800)
    return time.monotonic() - t, p.returncode


def stages(db: Path, work: Path) -> None:
    floor, _ = _wall(["--version"], work)
    print(f"\nother stages (baseline: `python -m download_db --version` {floor:.2f} s)")
    for name, args in (("report --json", ["report", "--db", str(db), "--json"]),
                       ("merge (no tasks: open, migrate, freeze)", ["merge", "--db", str(db)]),
                       ("report --json (frozen DB)", ["report", "--db", str(db), "--json"])):
        s, code = _wall(args, work)
        print(f"  {name:<42} {s:7.2f} s  ({s / floor:5.1f}x the floor, exit {code})", flush=True)
    # check reads the whole file by design: its start-up is the time to its first line
    t0 = time.monotonic()
    p = _proc(["check", "--db", str(db), "--no-files"], work)
    first = p.stdout.readline() if p.stdout else ""
    up = time.monotonic() - t0
    time.sleep(1.0)
    stop, code = _stop(p)
    print(f"  {'check (to its first line)':<42} {up:7.2f} s  ({up / floor:5.1f}x the floor): "
          f"{first.strip()[:60]!r}; stopped {stop:.2f} s after SIGTERM (exit {code})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--build", type=int, metavar="IMAGES", help="build it first if missing")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/startup-bench"))
    ap.add_argument("--cap", type=float, default=120.0, metavar="SECONDS",
                    help="cut each old statement off after this long (default: 120)")
    a = ap.parse_args(argv)
    if not a.db.exists():
        if not a.build:
            sys.exit(f"{a.db} not found; pass --build IMAGES")
        bigdb.build(a.db, a.build)
    a.workdir.mkdir(parents=True, exist_ok=True)
    ro = open_readonly(a.db)
    n, todo = (ro.execute("SELECT coalesce(sum(n), 0) FROM image_tally").fetchone()[0],
               tallies.work_left(ro))
    ro.close()
    print(json.dumps({"db": str(a.db), "images": n, "work_left": todo,
                      "size_gb": round(a.db.stat().st_size / 1e9, 1)}))
    statements(a.db, a.cap)
    downloads(a.db, a.workdir)
    stages(a.db, a.workdir)
    shutil.rmtree(a.workdir / "images", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
