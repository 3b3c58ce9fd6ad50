"""Opening a database: every pragma, transactions, the read-only open, retries and deletion."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from .sqlite import sqlite3

T = TypeVar("T")

PAGE_SIZE = 16384  # measured: 16% faster bulk insert and index builds than 4 KiB
# Files SQLite keeps beside a database (rollback journal, WAL and its index).
SIDE_FILES = ("-wal", "-shm", "-journal")
# Error texts worth a retry: another process holds the lock longer than the busy
# timeout (slow shared filesystems). READ_ERRORS adds what network filesystems
# produce transiently, which only a read can safely retry.
LOCK_ERRORS = ("locked", "busy")
READ_ERRORS = (*LOCK_ERRORS, "disk i/o")
WRITE_RETRIES = (0.5, 1.0, 2.0, 4.0)


def connect(
    path: str | Path,
    *,
    bulk: bool = False,
    wal: bool | None = True,
    busy_timeout_s: float = 60.0,
) -> sqlite3.Connection:
    """Open the database for writing with the project's pragmas.

    ``bulk`` is for a single-writer bulk load: large cache, no fsync (a killed
    process loses nothing committed; an OS crash may need ``--reset``, which
    rebuilds in minutes). ``wal=False``: a rollback journal, for a database
    written on one node and read from others. ``wal=None``: keep the file's
    journal mode (one small write that must leave a frozen database frozen).
    """
    conn = sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None,
                           check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
    if bulk:
        # A rollback journal records only pre-images of changed pages; bulk
        # appends change few, so it writes about half of what WAL writes (WAL
        # writes every page twice). A killed process leaves a hot journal that
        # the next open rolls back. The finished build switches to WAL.
        _journal_mode(conn, "TRUNCATE")
        conn.execute("PRAGMA synchronous = OFF")
        # Inserts are appends and need little cache. Index sorts spill to temp
        # files (SQLITE_TMPDIR, else /var/tmp or /tmp), so memory stays flat at
        # any row count.
        conn.execute("PRAGMA cache_size = -32768")
        conn.execute("PRAGMA temp_store = FILE")
        conn.execute("PRAGMA threads = 2")  # helper threads for index sorts
    elif wal is None:
        conn.execute("PRAGMA synchronous = NORMAL")
    elif not wal:
        # An array task's own database: one writer on one node, read from other
        # nodes (report, merge), which WAL cannot serve over a network filesystem.
        _journal_mode(conn, "TRUNCATE")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA cache_size = -65536")
    else:
        # WAL: readers never block the writer and vice versa (all on one host).
        _journal_mode(conn, "WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA cache_size = -65536")  # 64 MB: claims and results touch little
    # Keep the -wal file from staying huge after a burst.
    conn.execute("PRAGMA journal_size_limit = 67108864")
    conn.execute("PRAGMA foreign_keys = OFF")
    # Debian builds SQLite with SECURE_DELETE: every changed or deleted cell is zeroed
    # in place. Nothing here is secret, and the zeroing costs 7 % of a 10M-row merge.
    conn.execute("PRAGMA secure_delete = OFF")
    return conn


def _journal_mode(conn: sqlite3.Connection, mode: str) -> None:
    """Switch the journal mode, retried while the file is locked. The switch needs the
    only lock on the file, and when several processes open a frozen database at once
    (two downloads started together) SQLite answers all but one 'database is locked'
    at once instead of calling the busy handler, which would deadlock them."""
    retry_locked(lambda: conn.execute(f"PRAGMA journal_mode = {mode}").fetchone())


def readonly_uri(path: str | Path, *, immutable: bool = False) -> str:
    """A ``mode=ro`` URI (for connect or ATTACH). ``immutable``: no locks and no
    -shm, for a file that nobody writes while it is read (a frozen main DB)."""
    uri = f"file:{Path(path).resolve().as_posix()}?mode=ro"
    return uri + "&immutable=1" if immutable else uri


def open_readonly(path: str | Path, *, immutable: bool = False,
                  busy_timeout_s: float = 30.0) -> sqlite3.Connection:
    """Open an existing database read-only: nothing is created, migrated or written
    (mode=ro and query_only, so even a stray write statement fails)."""
    conn = sqlite3.connect(readonly_uri(path, immutable=immutable), uri=True,
                           timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
    conn.execute("PRAGMA query_only = ON")
    return conn


def use_wal(conn: sqlite3.Connection) -> None:
    """Switch a finished build to WAL: readers and the writer never block each other."""
    conn.execute("PRAGMA journal_mode = WAL")


def remove_database(path: str | os.PathLike, *, lock_file: bool = False) -> None:
    """Delete a database and its side files. ``lock_file``: also its stage lock
    (``<db>.lock``), for a database nobody holds (a merged array task's)."""
    suffixes = ("", *SIDE_FILES, *((".lock",) if lock_file else ()))
    for suffix in suffixes:
        Path(f"{os.fspath(path)}{suffix}").unlink(missing_ok=True)


class transaction:
    """``with transaction(conn):`` BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error.

    IMMEDIATE takes the write lock up front, so the busy timeout applies and no
    statement inside can fail with SQLITE_BUSY on a read-to-write upgrade.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:  # an interrupted statement rolled it back already
            self.conn.execute("ROLLBACK")


# VM instructions between looks at the stop flag: well under a millisecond of work.
PROGRESS_STEPS = 20_000


@contextmanager
def interruptible(conn: sqlite3.Connection, stop: Callable[[], bool]) -> Iterator[None]:
    """Statements run inside the block end within moments of ``stop()`` turning true
    (a stop signal's flag), however long they would run: SQLite calls the check every
    PROGRESS_STEPS instructions and abandons the statement (its transaction rolls
    back). A signal's Python handler runs inside the check, on the main thread,
    so even a single statement walking millions of rows honours SIGTERM.
    ``sqlite3.OperationalError('interrupted')`` comes out of the block."""
    conn.set_progress_handler(stop, PROGRESS_STEPS)
    try:
        yield
    finally:
        conn.set_progress_handler(None, 0)


def was_interrupted(e: BaseException) -> bool:
    """The error an interruptible() statement raises when stopped."""
    return isinstance(e, sqlite3.OperationalError) and "interrupted" in str(e)


def retry_locked(fn: Callable[[], T], *, delays: tuple[float, ...] = WRITE_RETRIES,
                 errors: tuple[str, ...] = LOCK_ERRORS) -> T:
    """Run ``fn``; when it fails with one of ``errors`` (text of an OperationalError),
    sleep each of ``delays`` in turn and run it again (a last resort behind the busy
    timeout, for slow shared filesystems). Other errors, and the last, propagate."""
    for delay in (*delays, None):
        try:
            return fn()
        except sqlite3.OperationalError as e:
            msg = str(e).lower()
            if delay is None or not any(s in msg for s in errors):
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises
