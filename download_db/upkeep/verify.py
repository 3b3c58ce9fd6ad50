"""The verify stage: walk saved files oldest check first; requeue missing or unsound ones."""

from __future__ import annotations

import hashlib
import io
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from PIL import Image

from ..arrays.plan import parse_shard
from ..arrays.task import shard_of
from ..db import gbif_ids, runs, upkeep
from ..db.connection import retry_locked, transaction
from ..db.sqlite import sqlite3
from ..errors import UsageError
from ..progress import RunContext
from ..stages import open_stage, require_db_and_root
from ..states import (
    DEFAULT_MAX_ATTEMPTS,
    VERIFY_HASH,
    VERIFY_MISSING,
    VERIFY_SIZE,
    VERIFY_UNDECODABLE,
)
from ..web import sniff
from . import revisit
from .throttle import Throttle

BATCH = 10_000  # images per read and per commit: bounds memory and what a kill redoes


@dataclass(frozen=True)
class VerifyConfig:
    db: Path
    install_path: Path
    hash: bool = False  # compare the recorded sha256 (reads every byte)
    decode: bool = False  # decode the file (reads every byte)
    limit: int | None = None  # check at most this many files
    max_runtime: float | None = None  # seconds, then stop cleanly
    max_mb_per_s: float = 0.0  # I/O budget for reads (0: none); stats are not counted
    older_than_days: float = 0.0  # only files not checked in this many days (0: all)
    threads: int = 8  # files checked at once (a shared filesystem's latency hides behind them)
    batch: int = BATCH
    shard: str = ""  # "K/N": array task (upkeep/verify_array.py); "" from the scheduler; none
    revisit_days: float | None = None  # reopen permanent failures last tried this long ago
    revisit_limit: int = revisit.DEFAULT_LIMIT
    revisit_only: bool = False  # no file checks
    force: bool = False  # run although array tasks may be reading the frozen main database
    bar: bool | None = None
    progress_every: float = 10.0

    def validate(self) -> VerifyConfig:
        require_db_and_root(self.db, self.install_path)
        checks = [
            (self.limit is None or self.limit >= 1, "--limit must be at least 1"),
            (self.max_runtime is None or self.max_runtime > 0, "--max-runtime must be positive"),
            (self.max_mb_per_s >= 0, "--max-mb-per-s must be >= 0 (0 = no limit)"),
            (self.older_than_days >= 0, "--older-than must be >= 0 days"),
            (1 <= self.threads <= 256, "--threads must be between 1 and 256"),
            (1 <= self.batch <= 100_000, "--batch must be between 1 and 100000"),
            (self.revisit_days is None or self.revisit_days >= 0,
             "--revisit-failed-older-than must be >= 0 days"),
            (self.revisit_limit >= 1, "--revisit-limit must be at least 1"),
            (not self.revisit_only or self.revisit_days is not None,
             "--revisit-only needs --revisit-failed-older-than DAYS"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UsageError(msg)
        if self.shard and self.shard.strip().lower() != "none":
            parse_shard(self.shard)
        return self


@dataclass
class VerifyStats:
    checked: int = 0
    sound: int = 0
    requeued: dict[str, int] = field(default_factory=dict)  # by reason (error_type)
    revisited: int = 0  # permanent failures reopened (--revisit-failed-older-than)
    bytes_read: int = 0
    throttled_s: float = 0.0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"checked": self.checked, "sound": self.sound, "requeued": dict(self.requeued),
                "revisited": self.revisited,
                "bytes_read": self.bytes_read, "throttled_s": round(self.throttled_s, 1),
                "seconds": round(self.seconds, 2)}


def end_run(conn: sqlite3.Connection, run_id: int, st: VerifyStats, throttle: Throttle,
            t0: float) -> str:
    """Record a pass's end (local or an array task's); returns its unsound files by
    reason, as one phrase."""
    st.throttled_s = throttle.slept
    st.seconds = time.monotonic() - t0
    runs.finish_run(conn, run_id, runs.OK, st.as_dict())
    return ", ".join(f"{k} {v:,}" for k, v in sorted(st.requeued.items())) or "none"


# --- one file ---------------------------------------------------------------------
def undecodable(data: bytes) -> str | None:
    """Why these bytes do not decode as an image, or None when they do (pure). JPEGs
    decode in draft mode (DCT scaling still reads every entropy-coded byte)."""
    fmt = sniff.image_format(data[:4096])
    if fmt in sniff.RAW_FORMATS:
        try:
            import rawpy  # lazily: few collections hold raws

            with rawpy.imread(io.BytesIO(data)) as raw:
                raw.raw_image_visible.shape  # noqa: B018 - unpacks the sensor data
        except Exception as e:  # noqa: BLE001 - LibRaw raises many types; any means unsound
            return f"camera raw does not decode: {type(e).__name__}: {e}"
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "JPEG":
                w, h = im.size
                im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                im.load()
    except Exception as e:  # noqa: BLE001 - whatever Pillow raises, the file is unsound
        return f"does not decode: {type(e).__name__}: {e}"
    return None


def check(root: Path, s: upkeep.Saved, *, want_hash: bool, want_decode: bool,
          throttle: Throttle) -> tuple[str, str, int] | None:
    """(error_type, detail, bytes read) of an unsound file, None for a sound one (with
    the bytes read in ``throttle``'s books). Flagged legacy files have no sha256 to
    compare: their size and, with --decode, their decoding are checked."""
    if not s.file_path:
        return VERIFY_MISSING, "saved image without a file path", 0
    path = root / s.file_path
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return VERIFY_MISSING, f"file not found: {s.file_path}", 0
    except OSError as e:
        return VERIFY_MISSING, f"cannot stat {s.file_path}: {e.strerror}", 0
    if s.file_size is not None and size != s.file_size:
        return VERIFY_SIZE, f"{s.file_path} is {size:,} bytes, {s.file_size:,} recorded", 0
    want_hash = want_hash and s.sha256 is not None
    if not (want_hash or want_decode):
        return None
    throttle.take(size)
    try:
        data = path.read_bytes()
    except OSError as e:
        return VERIFY_MISSING, f"cannot read {s.file_path}: {e.strerror}", 0
    if want_hash and hashlib.sha256(data).hexdigest() != s.sha256:
        return VERIFY_HASH, f"{s.file_path}: sha256 differs from the one recorded", len(data)
    if want_decode:
        why = undecodable(data)
        if why:
            return VERIFY_UNDECODABLE, f"{s.file_path}: {why}"[:2000], len(data)
    return None


def checks(cfg: VerifyConfig) -> str:
    return "+".join(["size", *(["sha256"] if cfg.hash else []),
                     *(["decode"] if cfg.decode else [])])


# --- the stage ----------------------------------------------------------------------
def run_verify(cfg: VerifyConfig, out: TextIO | None = None) -> VerifyStats:
    """Check saved files, never-checked then oldest-checked first; resumable (the order
    is the state: a checked file moves to the end), recorded in runs as 'verify'.
    Runs beside downloads (shared stage lock, short transactions). As an array task
    (--shard K/N, or the scheduler's variables) it writes verdicts for the merge."""
    cfg.validate()
    shard = shard_of(cfg)
    if shard is not None:
        from .verify_array import run_verify_task

        return run_verify_task(cfg, shard, out)
    # array tasks read the frozen main database immutable: a local verify writing it then
    # would change pages under them (the verify array, scripts/*/verify.sh, runs beside them)
    with open_stage(cfg, "verify", out, refuse_arrays="verifying here",
                    force=cfg.force) as (conn, ctx):
        return _run(conn, cfg, ctx)


def _run(conn: sqlite3.Connection, cfg: VerifyConfig, ctx: RunContext) -> VerifyStats:
    t0 = time.monotonic()
    start = time.time()
    cutoff = start - cfg.older_than_days * 86400 if cfg.older_than_days else start
    st = VerifyStats()
    throttle = Throttle(cfg.max_mb_per_s * 1e6)
    run_id = runs.start_run(conn, "verify")
    if cfg.revisit_days is not None:
        st.revisited = revisit.revisit(conn, cfg.revisit_days, cfg.revisit_limit, ctx,
                                       now=start).reopened
    if cfg.revisit_only:
        st.seconds = time.monotonic() - t0
        runs.finish_run(conn, run_id, runs.OK, st.as_dict())
        return st
    saved = upkeep.count_saved(conn)
    total = min(saved, cfg.limit) if cfg.limit else saved
    what = checks(cfg)
    ctx.say(f"verify: up to {total:,} of {saved:,} saved files under {cfg.install_path} "
            f"({what})")
    progress = ctx.progress("verify", total, item="files", counting=True)
    pool = ThreadPoolExecutor(cfg.threads) if cfg.threads > 1 else None
    after = -1
    try:
        while cfg.limit is None or st.checked < cfg.limit:
            if cfg.max_runtime is not None and time.monotonic() - t0 >= cfg.max_runtime:
                ctx.say("verify: --max-runtime reached; run again to continue")
                break
            n = cfg.batch if cfg.limit is None else min(cfg.batch, cfg.limit - st.checked)
            rows = upkeep.to_check(conn, cutoff, n, after=after)
            if not rows:
                break
            never = [r.image_id for r in rows if r.last_checked is None]
            after = max(never) if never else after
            verdicts = check_all(cfg, rows, throttle, pool)
            _record(conn, cfg, run_id, rows, verdicts, st)
            progress.update(progress.done_bytes + len(rows), len(rows))
            ctx.check_stop()
    except runs.ENDING_ERRORS as e:
        st.seconds = time.monotonic() - t0
        runs.end_on_error(conn, run_id, st.as_dict(), e)
    finally:
        progress.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    bad = end_run(conn, run_id, st, throttle, t0)
    ctx.say(f"verify: {st.checked:,} files checked, {st.sound:,} sound, requeued: {bad}; "
            f"{st.bytes_read / 1e6:,.1f} MB read in {st.seconds:.1f}s")
    return st


def check_all(cfg: VerifyConfig, rows: list[upkeep.Saved], throttle: Throttle,
               pool: ThreadPoolExecutor | None) -> list[tuple[str, str, int] | None]:
    """Verdicts in row order; threads take contiguous slices (one task per slice, not
    per file: a stat is microseconds, a task hand-off is not much less)."""
    def part(sl: list[upkeep.Saved]) -> list[tuple[str, str, int] | None]:
        return [check(cfg.install_path, s, want_hash=cfg.hash, want_decode=cfg.decode,
                      throttle=throttle) for s in sl]
    if pool is None:
        return part(rows)
    step = -(-len(rows) // cfg.threads)
    return [v for vs in pool.map(part, [rows[i:i + step] for i in range(0, len(rows), step)])
            for v in vs]


def _record(conn: sqlite3.Connection, cfg: VerifyConfig, run_id: int,
            rows: list[upkeep.Saved], verdicts: list, st: VerifyStats) -> None:
    """One transaction per batch: sound files get last_checked, unsound ones go back
    to pending (and their gbifIDs roll up); then the unsound files still on disk are
    removed, so that the downloader fetches them again instead of adopting them."""
    now = time.time()
    sound = [r.image_id for r, v in zip(rows, verdicts, strict=True) if v is None]
    bad = [(r, v) for r, v in zip(rows, verdicts, strict=True) if v is not None]
    requeued: list[tuple[upkeep.Saved, str]] = []

    def txn() -> None:
        requeued.clear()
        with transaction(conn):
            held = []  # a success awaiting its rename (claimed): in flux, next pass
            for r, (etype, detail, _) in bad:
                if upkeep.requeue(conn, [(r.image_id, etype, detail)], now):
                    requeued.append((r, etype))
                else:
                    held.append(r.image_id)
            upkeep.mark_checked(conn, sound + held, now)
            if requeued:
                gbif_ids.rollup(conn, {r.gbif_id for r, _ in requeued},
                                max_attempts=DEFAULT_MAX_ATTEMPTS, now=now)
            counts = st.as_dict()
            counts["checked"] += len(rows)
            runs.heartbeat(conn, run_id, counts)

    retry_locked(txn)
    for r, etype in requeued:
        st.requeued[etype] = st.requeued.get(etype, 0) + 1
        if etype != VERIFY_MISSING and r.file_path:
            (cfg.install_path / r.file_path).unlink(missing_ok=True)
    st.checked += len(rows)
    st.sound += len(sound)
    st.bytes_read += sum(v[2] for v in verdicts if v is not None)
    st.bytes_read += sound_bytes(cfg, rows, verdicts)


def sound_bytes(cfg: VerifyConfig, rows: list[upkeep.Saved], verdicts: list) -> int:
    """Bytes read for sound files (their recorded size) when the check read them."""
    if not (cfg.hash or cfg.decode):
        return 0
    return sum(r.file_size or 0 for r, v in zip(rows, verdicts, strict=True)
               if v is None and (cfg.decode or r.sha256 is not None))
