"""Integrity check: SQLite's own check, row counts, and counters, rows and files cross-checked."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..db import claims, hosts, tallies
from ..db.sqlite import sqlite3
from ..states import ALIVE_WINDOW

_NAME = re.compile(r"^(\d+)-(\d{2,})\.[A-Za-z0-9]+$")


@dataclass
class CheckResult:
    sqlite_check: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.sqlite_check == ["ok"] and not self.problems


def check(conn: sqlite3.Connection, install_path: Path | None, *, full: bool = False,
          files: bool = True, say: Callable[[str], None] = lambda s: None) -> CheckResult:
    """Run every check on a read-only connection; nothing is written anywhere."""
    t0 = time.monotonic()
    res = CheckResult()
    pragma = "integrity_check" if full else "quick_check"
    say(f"PRAGMA {pragma} (reads the whole file)")
    res.sqlite_check = [r[0] for r in conn.execute(f"PRAGMA {pragma}")]
    # One read transaction: every cross-check sees the same snapshot, even
    # while a downloader commits.
    conn.execute("BEGIN")
    try:
        for table in ("images", "gbif_ids", "hosts", "attributions", "runs"):
            res.counts[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        say("counters against rows (one scan of images)")
        _counters(conn, res)
        _claims(conn, res)
        if files and install_path is not None:
            say(f"files under {install_path}")
            _files(conn, install_path, res)
    finally:
        conn.execute("ROLLBACK")
    res.seconds = time.monotonic() - t0
    return res


def _counters(conn: sqlite3.Connection, res: CheckResult) -> None:
    actual = {tuple(r[:5]): (r[5], r[6])
              for r in conn.execute(tallies.recount_sql(tallies.IMAGE_TALLY))}
    kept = {tuple(r[:5]): (r[5], r[6]) for r in conn.execute(
        "SELECT host_id, status, error_type, attempts, parked, n, bytes FROM image_tally "
        "WHERE n <> 0 OR bytes <> 0")}
    bad = [k for k in actual.keys() | kept.keys() if actual.get(k) != kept.get(k)]
    for k in sorted(bad, key=str)[:10]:
        res.problems.append(f"image counter {k}: rows say {actual.get(k)}, counter says "
                            f"{kept.get(k)} (count, bytes)")
    if len(bad) > 10:
        res.problems.append(f"... {len(bad) - 10} more image counter disagreements")
    g_actual = dict(conn.execute(tallies.recount_sql(tallies.GBIF_TALLY)))
    g_kept = {s: n for s, n in conn.execute("SELECT status, n FROM gbif_tally") if n}
    if g_actual != g_kept:
        res.problems.append(f"gbifID counters {g_kept} disagree with rows {g_actual}")
    n_images = conn.execute("SELECT coalesce(sum(n_images), 0) FROM gbif_ids").fetchone()[0]
    if n_images != res.counts["images"]:
        res.problems.append(f"gbif_ids.n_images adds up to {n_images:,}, images has "
                            f"{res.counts['images']:,} rows")
    per_host = hosts.miscounted(conn)
    if per_host:
        res.problems.append(f"{per_host:,} hosts have n_images unequal to their image count")


def _claims(conn: sqlite3.Connection, res: CheckResult) -> None:
    # the same test a starting downloader applies before it recovers claims
    live = claims.live_tokens(conn, stale_after=ALIVE_WINDOW)
    stale = sum(n for tok, n in conn.execute(
        "SELECT claimed_by, count(*) FROM images WHERE claimed_by IS NOT NULL "
        "GROUP BY claimed_by") if tok not in live)
    if stale:
        res.warnings.append(f"{stale:,} images are claimed by runs that are not running; the "
                            "next image_install_db.py start recovers them")


def _files(conn: sqlite3.Connection, root: Path, res: CheckResult) -> None:
    if not root.is_dir():
        res.problems.append(f"image root {root} does not exist")
        return
    missing = wrong_size = 0
    examples: list[str] = []
    n = 0
    for path, size in conn.execute(
            "SELECT file_path, file_size FROM images WHERE status = 'success'"):
        n += 1
        try:
            st = os.stat(root / path)
        except (OSError, TypeError):
            missing += 1
            if len(examples) < 5:
                examples.append(str(path))
            continue
        if size is not None and st.st_size != size:
            wrong_size += 1
    res.counts["success_files_checked"] = n
    if missing:
        res.problems.append(f"{missing:,} success rows have no file, e.g. {', '.join(examples)}")
    if wrong_size:
        res.problems.append(f"{wrong_size:,} files differ in size from their row")
    temps, orphans, seen = [], [], 0
    lookup = ("SELECT file_path FROM images WHERE gbif_id = ? AND image_no = ? "
              "AND status = 'success'")
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            seen += 1
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if name.endswith(".part"):
                temps.append(rel)
                continue
            m = _NAME.match(name)
            row = conn.execute(lookup, (int(m[1]), int(m[2]))).fetchone() if m else None
            if row is None or row[0] != rel:
                orphans.append(rel)
    res.counts["files_on_disk"] = seen
    running = conn.execute("SELECT count(*) FROM runs WHERE stage = 'download' "
                           "AND outcome = 'running'").fetchone()[0]
    if temps:
        msg = f"{len(temps):,} temporary .part files, e.g. {', '.join(temps[:3])}"
        if running:
            res.warnings.append(msg + " (a download is running: they may be in flight)")
        else:
            res.problems.append(msg + " (no download is running)")
    if orphans:
        res.warnings.append(f"{len(orphans):,} files under the image root have no success row "
                            f"(not written by this database), e.g. {', '.join(orphans[:3])}")
