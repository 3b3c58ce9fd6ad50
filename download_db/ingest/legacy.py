"""Legacy import: adopt files from the older flat-file downloader (processed_ids.txt)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from ..db.connection import transaction
from ..db.meta import get_meta, set_meta
from ..db.sqlite import sqlite3
from ..errors import InputError
from ..files import images
from ..files.layout import image_relpath, legacy_relpath
from ..progress import RunContext
from ..states import FLAG_LEGACY, FLAG_RAW, LEGACY_INVALID, PENDING, SUCCESS

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
    verified: int = 0  # decoded, sha256/size/width/height recorded
    invalid: int = 0  # not a usable image: left pending (legacy_invalid), file not renamed


@dataclass(frozen=True)
class Checked:
    """What decoding a legacy file found: the file's facts, or why it is unusable."""

    size: int = 0
    sha256: str = ""
    width: int | None = None
    height: int | None = None
    raw: bool = False
    error: str | None = None


def check_file(path: str) -> Checked:
    """Decode one legacy file (runs in worker processes: returns, never raises)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return Checked(error=f"cannot read: {e.strerror}")
    try:
        out = images.verify_saved(data)
        if out.ext == "jpg" and not out.raw_unprocessed and len(data) >= 8 << 20:
            images.convert(data, max_size=64)  # verify_saved decodes JPEGs under 8 MB only
    except images.ImageError as e:
        return Checked(error=f"{e.error_type}: {e.detail}"[:2000])
    return Checked(len(data), hashlib.sha256(data).hexdigest(), out.width or None,
                   out.height or None, out.raw_unprocessed)


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
                  ctx: RunContext | None = None, *, verify: bool = True,
                  workers: int = 2) -> LegacyStats:
    """Adopt image 0 of each processed gbifID, renaming <id>.jpg to <id>-00.jpg.
    ``verify``: each file is decoded first (``workers`` processes, outside any
    transaction) and recorded with sha256/size/width/height, or left pending as
    legacy_invalid; without it, marked success as is (flag legacy_unverified_index).
    Chunked commits; resumes where it stopped."""
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

    pool: Executor | None = ProcessPoolExecutor(workers) if verify and workers > 1 else None

    def flush() -> None:
        checked = _check_batch(conn, root, batch, pool) if verify else None
        with transaction(conn):
            for s in batch:
                _import_one(conn, root, s, stats, checked)
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
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if failed is not None:
        for s in _ids(Path(failed), 0):
            if s.isdigit():
                stats.failed_listed += 1
                if conn.execute("SELECT 1 FROM gbif_ids WHERE gbif_id = ?", (int(s),)).fetchone():
                    stats.failed_known += 1
    return stats


def _check_batch(conn: sqlite3.Connection, root: Path, batch: list[str],
                 pool: Executor | None) -> dict[int, Checked]:
    """Decode the files of a batch's not-yet-imported gbifIDs, before its transaction
    (reads and decoding never hold the write lock); gbifID -> what was found."""
    todo: dict[int, str] = {}
    for s in batch:
        if not s.isdigit():
            continue
        gid = int(s)
        row = conn.execute("SELECT status FROM images WHERE gbif_id = ? AND image_no = 0",
                           (gid,)).fetchone()
        if row is None or row[0] == SUCCESS:
            continue
        for rel in (image_relpath(gid, 0, "jpg"), legacy_relpath(gid)):
            if (root / rel).exists():
                todo[gid] = str(root / rel)
                break
    paths = list(todo.values())
    found = pool.map(check_file, paths, chunksize=max(1, len(paths) // 64)) if pool \
        else map(check_file, paths)
    return dict(zip(todo, found, strict=True))


def _import_one(conn: sqlite3.Connection, root: Path, s: str, stats: LegacyStats,
                checked: dict[int, Checked] | None = None) -> None:
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
    c = checked.get(gid) if checked is not None else None
    if c is not None and c.error is not None:
        stats.invalid += 1  # the downloader fetches it; its file keeps its name
        conn.execute("UPDATE images SET status = ?, error_type = ?, error_detail = ? "
                     "WHERE image_id = ?", (PENDING, LEGACY_INVALID, c.error, image_id))
        return
    if checked is not None and c is None:
        stats.missing += 1  # no file when the batch was checked
        return
    if new.exists():
        stats.relabeled += 1
    elif old.exists():
        os.rename(old, new)
        stats.renamed += 1
    else:
        stats.missing += 1
        return
    if checked is None:
        conn.execute("UPDATE images SET status = ?, error_type = ?, file_path = ?, "
                     "file_size = ?, last_attempt_at = ? WHERE image_id = ?",
                     (SUCCESS, FLAG_LEGACY, rel, new.stat().st_size, time.time(), image_id))
        return
    assert c is not None
    # verified: the facts a download records, and last_checked (verify's stamp); no
    # last_attempt_at, so the throughput counters do not take an import for a download
    stats.verified += 1
    conn.execute("UPDATE images SET status = ?, error_type = ?, error_detail = ?, "
                 "file_path = ?, file_size = ?, sha256 = ?, width = ?, height = ?, "
                 "last_checked = ? WHERE image_id = ?",
                 (SUCCESS, FLAG_RAW if c.raw else None, "legacy import, verified", rel, c.size,
                  c.sha256, c.width, c.height, time.time(), image_id))
