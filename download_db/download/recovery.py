"""Start-up recovery: finish or undo what dead downloader runs left (claims, temp files)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from ..db import claims, gbif_ids
from ..db.connection import transaction
from ..db.sqlite import sqlite3
from ..db.upkeep import PREV_ERROR_SQL
from ..files import images, store
from ..files.layout import image_relpath
from ..states import DEFAULT_MAX_ATTEMPTS, FROM_GBIF_CACHE


def recover(conn: sqlite3.Connection, root: Path, lease: float,
            keep_original: bool = False, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> dict:
    """Finish what dead runs left: rename committed files, adopt complete temp files,
    drop the rest, release claims. Only images those runs had claimed are looked at.

    Same order as a download: a row says success (still claimed) and commits
    before its file is renamed into place, and the claim is dropped after. A kill
    at any point leaves either no final file or a final file with its row."""
    live = claims.live_tokens(conn, stale_after=lease)
    dead = claims.dead_claims(conn, live)
    stats = {"claims": len(dead), "renamed": 0, "lost": 0, "temps": 0, "adopted": 0}
    mark_crashed = ("UPDATE runs SET outcome = 'crashed' WHERE stage = 'download' "
                    "AND outcome = 'running' AND run_id NOT IN (SELECT value FROM json_each(?))")
    live_ids = f"[{','.join(t.rsplit(':', 1)[1] for t in live)}]"
    if not dead:  # a run killed before its first claim is as dead as any
        with transaction(conn):
            conn.execute(mark_crashed, (live_ids,))
        return stats
    now = time.time()
    moves: list[tuple[int, str, Path]] = []  # (image_id, temp, final) after the commit
    with transaction(conn):
        for image_id, gid, no, status, file_path, sha, _tok in dead:
            if status == "success":
                final = root / file_path
                tmp = None if final.exists() else _matching_temp(root, gid, no, sha)
                if tmp is not None:
                    moves.append((image_id, tmp, final))
                    stats["renamed"] += 1
                    continue  # keeps its claim until the file is in place
                if not final.exists():  # committed, but the file never reached its name
                    stats["lost"] += 1
                    conn.execute("UPDATE images SET status = 'pending', file_path = NULL, "
                                 "file_size = NULL, sha256 = NULL, width = NULL, height = NULL, "
                                 "next_attempt_at = ? WHERE image_id = ?", (now, image_id))
            else:
                adopted = _adopt_temp(conn, root, image_id, gid, no, now, keep_original)
                if adopted is not None:
                    moves.append((image_id, *adopted))
                    stats["adopted"] += 1
                    continue
                conn.execute("UPDATE images SET next_attempt_at = min(next_attempt_at, ?) "
                             "WHERE image_id = ?", (now, image_id))
            conn.execute("UPDATE images SET claimed_by = NULL WHERE image_id = ?", (image_id,))
        conn.execute(mark_crashed, (live_ids,))
        # adopted and lost images changed status: their gbifIDs follow, as after a batch
        gbif_ids.rollup(conn, {d[1] for d in dead}, max_attempts=max_attempts, now=now)
    for _image_id, tmp, final in moves:
        os.replace(tmp, final)
    for _image_id, gid, no, *_rest in dead:
        stats["temps"] += store.clean_temps(root, gid, no)
    if moves:
        with transaction(conn):
            conn.executemany("UPDATE images SET claimed_by = NULL WHERE image_id = ?",
                             [(m[0],) for m in moves])
    return stats


def _matching_temp(root: Path, gid: int, no: int, sha: str | None) -> str | None:
    """The temp file holding exactly the committed bytes, if one is left."""
    for tmp in store.temp_candidates(root, gid, no):
        try:
            data = Path(tmp).read_bytes()
        except OSError:
            continue
        if sha and hashlib.sha256(data).hexdigest() == sha:
            return tmp
    return None


def _adopt_temp(conn: sqlite3.Connection, root: Path, image_id: int, gid: int, no: int,
                now: float, keep_original: bool) -> tuple[str, Path] | None:
    """A dead run fetched this image and wrote its temp file, but died before the
    commit: adopt the file if it is complete instead of fetching it again. Writes
    the success row (the claim stays); returns (temp, final) to rename after the
    commit."""
    for tmp in store.temp_candidates(root, gid, no):
        try:
            data = Path(tmp).read_bytes()
            out = images.verify_saved(data)
        except (OSError, images.ImageError):
            continue
        if not keep_original and out.ext != "jpg" and not out.raw_unprocessed:
            continue
        rel = image_relpath(gid, no, out.ext)
        # a permanent failure claimed can only have been claimed for the rescue from
        # GBIF's image cache: its temp file is the cache's copy (claims.rescue_params)
        conn.execute(
            "UPDATE images SET status = 'success', error_type = ?, error_detail = ?, "
            "http_status = 200, file_path = ?, file_size = ?, sha256 = ?, width = ?, height = ?, "
            "fetched_url = NULL, attempts = attempts + (status <> 'failed_permanent'), "
            "last_attempt_at = ?, "
            f"prev_error = CASE WHEN status = 'failed_permanent' THEN {PREV_ERROR_SQL} "
            "ELSE prev_error END, from_gbif_cache = CASE WHEN status = 'failed_permanent' "
            f"THEN {FROM_GBIF_CACHE} END, next_attempt_at = 0 WHERE image_id = ?",
            ("raw_unprocessed" if out.raw_unprocessed else None,
             "adopted after a crash", rel, len(data), hashlib.sha256(data).hexdigest(),
             out.width or None, out.height or None, now, image_id))
        return tmp, root / rel
    return None
