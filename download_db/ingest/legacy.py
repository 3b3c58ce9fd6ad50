"""Legacy import: adopt files from the older flat-file downloader (processed_ids.txt)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ..db.connection import transaction
from ..db.meta import get_meta, set_meta
from ..db.sqlite import sqlite3
from ..errors import InputError
from ..files.layout import image_relpath, legacy_relpath
from ..progress import RunContext
from ..states import FLAG_LEGACY, SUCCESS

BATCH = 50_000


@dataclass
class LegacyStats:
    lines: int = 0
    renamed: int = 0  # <id>.jpg -> <id>-00.jpg
    relabeled: int = 0  # <id>-00.jpg already there (e.g. an interrupted earlier import)
    missing: int = 0  # listed, but no file on disk: counted, not marked
    already: int = 0  # image 0 already success (idempotent re-run)
    unknown: int = 0  # gbifID not in this database
    not_numeric: int = 0
    failed_listed: int = 0  # in failed_ids.txt: left pending for a fresh, tracked retry
    failed_known: int = 0


def _ids(path: Path, skip: int) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f):
                if i >= skip:
                    yield line.strip()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None


def import_legacy(conn: sqlite3.Connection, install_path: str | Path, processed: str | Path,
                  failed: str | Path | None = None,
                  ctx: RunContext | None = None) -> LegacyStats:
    """Mark image 0 of each processed gbifID success (flag legacy_unverified_index),
    renaming <id>.jpg to <id>-00.jpg. Chunked commits; resumes where it stopped."""
    ctx = ctx or RunContext()
    root = Path(install_path)
    processed = Path(processed)
    for p in (processed, failed):
        if p is not None and not Path(p).is_file():
            raise InputError(f"legacy file not found: {p}")
    st = processed.stat()
    fp = json.dumps({"path": str(processed.resolve()), "size": st.st_size,
                     "mtime": int(st.st_mtime)}, sort_keys=True)
    stats = LegacyStats()
    skip = 0
    if get_meta(conn, "legacy_source") == fp:
        skip = int(get_meta(conn, "legacy_lines") or 0)
        stats = LegacyStats(**json.loads(get_meta(conn, "legacy_stats") or "{}"))
    progress = ctx.progress("legacy", st.st_size, item="IDs")
    batch: list[str] = []

    def flush() -> None:
        with transaction(conn):
            for s in batch:
                _import_one(conn, root, s, stats)
            stats.lines += len(batch)
            set_meta(conn, "legacy_source", fp)
            set_meta(conn, "legacy_lines", str(stats.lines))
            set_meta(conn, "legacy_stats", json.dumps(asdict(stats)))
        progress.update(min(st.st_size, progress.done_bytes + sum(len(s) + 1 for s in batch)),
                        len(batch))
        batch.clear()

    try:
        for s in _ids(processed, skip):
            batch.append(s)
            if len(batch) >= BATCH:
                flush()
                ctx.check_stop()
        if batch or skip == 0:
            flush()
    finally:
        progress.close()
    if failed is not None:
        for s in _ids(Path(failed), 0):
            if s.isdigit():
                stats.failed_listed += 1
                if conn.execute("SELECT 1 FROM gbif_ids WHERE gbif_id = ?", (int(s),)).fetchone():
                    stats.failed_known += 1
    return stats


def _import_one(conn: sqlite3.Connection, root: Path, s: str, stats: LegacyStats) -> None:
    if not s.isdigit():
        if s:
            stats.not_numeric += 1
        return
    gid = int(s)
    row = conn.execute("SELECT image_id, status FROM images WHERE gbif_id = ? AND image_no = 0",
                       (gid,)).fetchone()
    if row is None:
        stats.unknown += 1
        return
    image_id, status = row
    if status == SUCCESS:
        stats.already += 1
        return
    rel = image_relpath(gid, 0, "jpg")
    new = root / rel
    old = root / legacy_relpath(gid)
    if new.exists():
        stats.relabeled += 1
    elif old.exists():
        os.rename(old, new)
        stats.renamed += 1
    else:
        stats.missing += 1
        return
    conn.execute("UPDATE images SET status = ?, error_type = ?, file_path = ?, file_size = ?, "
                 "last_attempt_at = ? WHERE image_id = ?",
                 (SUCCESS, FLAG_LEGACY, rel, new.stat().st_size, time.time(), image_id))
