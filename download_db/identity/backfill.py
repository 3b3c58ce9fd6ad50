"""The hash backfill: perceptual hashes for saved images lacking them, in resumable chunks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ..db import identity, runs
from ..db.connection import retry_locked, transaction
from ..db.sqlite import sqlite3
from ..errors import UsageError
from ..files import phash
from ..progress import RunContext
from ..stages import open_stage, require_db_and_root


@dataclass(frozen=True)
class HashConfig:
    db: Path
    install_path: Path
    workers: int = 1  # processes decoding and hashing (the main one writes)
    chunk: int = identity.CHUNK
    force: bool = False  # run although array tasks may be writing
    bar: bool | None = None
    progress_every: float = 10.0

    def validate(self) -> HashConfig:
        require_db_and_root(self.db, self.install_path)
        if not 1 <= self.workers <= 64:
            raise UsageError("--workers must be between 1 and 64")
        if not 1 <= self.chunk <= 100_000:
            raise UsageError("--chunk must be between 1 and 100000")
        return self


@dataclass
class HashStats:
    hashed: int = 0
    missing: int = 0  # recorded as saved, but no file under the image root
    unreadable: int = 0  # a file Pillow cannot decode (e.g. a raw kept as is)
    seconds: float = 0.0
    counts: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"hashed": self.hashed, "missing": self.missing, "unreadable": self.unreadable,
                "seconds": round(self.seconds, 2)}


def hash_file(path: str) -> tuple[int, int, bytes] | str:
    """(phash, dhash, edge hashes) of one file, or why not ('missing' / 'unreadable'); runs in
    worker processes, so it returns its verdict instead of raising."""
    try:
        return phash.file_hashes(Path(path))
    except FileNotFoundError:
        return "missing"
    except Exception:  # noqa: BLE001 - whatever Pillow raises, this file cannot be hashed
        return "unreadable"


def run_hash(cfg: HashConfig, out: TextIO | None = None) -> HashStats:
    """Hash every saved image without hashes; resumable (a cursor in meta) and
    recorded in the runs table as stage 'hash'."""
    cfg.validate()
    with open_stage(cfg, "hash", out, refuse_arrays="hashing", force=cfg.force) as (conn, ctx):
        return _run(conn, cfg, ctx)


def _run(conn: sqlite3.Connection, cfg: HashConfig, ctx: RunContext) -> HashStats:
    t0 = time.monotonic()
    st = HashStats()
    run_id = runs.start_run(conn, "hash")
    try:
        total = identity.count_to_hash(conn)
        start = identity.cursor(conn)
        ctx.say(f"hash: {total:,} saved images without hashes under {cfg.install_path}"
                + (f" (resuming after image {start:,})" if start else ""))
        progress = ctx.progress("hash", total, item="images", counting=True)
        pool = ProcessPoolExecutor(cfg.workers) if cfg.workers > 1 else None
        try:
            for rows, results, last in _chunks(conn, cfg, start, pool):
                done = [(i, f, *r) for (i, f), r in zip(rows, results, strict=True)
                        if isinstance(r, tuple)]
                for r in results:
                    if r == "missing":
                        st.missing += 1
                    elif r == "unreadable":
                        st.unreadable += 1

                def txn(done=done, last=last) -> None:
                    with transaction(conn):
                        identity.save_hashes(conn, done)
                        identity.set_cursor(conn, last)
                        runs.heartbeat(conn, run_id, st.as_dict())

                retry_locked(txn)
                st.hashed += len(done)
                progress.update(progress.done_bytes + len(rows), len(rows))
                ctx.check_stop()
        finally:
            progress.close()
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        with transaction(conn):
            identity.set_cursor(conn, 0)  # a later run starts over for newer images
    except runs.ENDING_ERRORS as e:
        runs.end_on_error(conn, run_id, st.as_dict(), e)
    st.seconds = time.monotonic() - t0
    runs.finish_run(conn, run_id, runs.OK, st.as_dict())
    ctx.say(f"hash: {st.hashed:,} images hashed, {st.missing:,} files missing, "
            f"{st.unreadable:,} unreadable, in {st.seconds:.1f}s")
    return st


def _chunks(conn: sqlite3.Connection, cfg: HashConfig, start: int,
            pool: ProcessPoolExecutor | None) -> Iterator[tuple[list, list, int]]:
    """(rows, their results, last image_id) per chunk; the next chunk is read
    while the pool hashes (reads are short, no transaction is held)."""
    root = cfg.install_path
    after = start
    while True:
        rows = identity.to_hash(conn, after, cfg.chunk)
        if not rows:
            return
        paths = [str(root / f) for _, f in rows]
        if pool is None:
            results = [hash_file(p) for p in paths]
        else:
            results = list(pool.map(hash_file, paths, chunksize=max(1, len(paths) // 64)))
        after = rows[-1][0]
        yield rows, results, after

