"""Pages of the manifest query read from SQLite straight into Arrow (ADBC), no Python rows."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pyarrow as pa

from ..db.connection import readonly_uri
from ..db.sqlite import sqlite3

# Rows the driver reads before it fixes a column's Arrow type, and rows per batch: a whole
# page, so the type of a column is decided on all its rows (a page whose first rows are
# NULL in a text column would otherwise be typed int64 and fail on the first string).
_BATCH_ROWS_OPTION = "adbc.sqlite.query.batch_rows"
BUSY_TIMEOUT_MS = 30_000
T = TypeVar("T")


def database_path(conn: sqlite3.Connection) -> Path:
    """The file behind an open connection (its main database)."""
    for _seq, name, file in conn.execute("PRAGMA database_list"):
        if name == "main" and file:
            return Path(file)
    raise ValueError("the connection has no database file")


class PageReader:
    """Runs one keyset-paged query; each page comes back as an Arrow table of ``types``.

    The sqlite3 module builds a Python tuple per row, and turning those into Arrow costs as
    much again (bench/export.py); ADBC's SQLite driver fills Arrow buffers in C. It opens
    the database read-only and with query_only, as open_readonly does.
    """

    def __init__(self, path: Path, sql: str, types: dict[str, pa.DataType],
                 page_rows: int) -> None:
        # imported here: it loads pyarrow.dataset, half a second no other command needs
        import adbc_driver_sqlite.dbapi as adbc

        self.sql, self.types, self.page_rows = sql, types, page_rows
        self.conn = adbc.connect(readonly_uri(path))
        self.cur = self.conn.cursor()
        for pragma in (f"busy_timeout = {BUSY_TIMEOUT_MS}", "query_only = ON"):
            self.cur.execute(f"PRAGMA {pragma}")
            self.cur.fetchall()

    def page(self, *params: object) -> pa.Table:
        """The page after ``params`` (the keyset's last key), columns named and typed."""
        self.cur.adbc_statement.set_options(**{_BATCH_ROWS_OPTION: str(self.page_rows)})
        self.cur.execute(self.sql, params)
        got = self.cur.fetch_arrow_table()
        cols = [got.column(k).cast(t) for k, t in enumerate(self.types.values())]
        return pa.table(cols, names=list(self.types))

    def close(self) -> None:
        self.cur.close()
        self.conn.close()

    def __enter__(self) -> PageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- several readers ---------------------------------------------------------------------
# Each reader is one SQLite walk on its own thread (the read releases the GIL): one reader
# is bounded by SQLite's own speed on one core, below what the Parquet writer takes.
READERS = max(1, min(4, (os.cpu_count() or 1)))
PAGES_PER_RANGE = 2  # a range's expected pages: small, so a reader never waits long
_DEPTH = 2  # batches a range may hold ready before its reader waits for the consumer
_MAX_RANGES = 10_000  # 1.3 billion images at two 65,536-row pages each


def key_ranges(lo: int | None, hi: int | None, rows: int, page_rows: int,
               pages_per_range: int = PAGES_PER_RANGE) -> list[tuple[int, int]]:
    """gbifID values lo..hi cut into [start, end) ranges of about ``pages_per_range``
    pages each, by value (gbifIDs spread fairly evenly; a denser range just takes
    more pages). A gbifID's images all fall in one range."""
    if lo is None or hi is None:
        return [(-(2 ** 63), 2 ** 63 - 1)]
    n = min(max(1, rows // max(1, page_rows * pages_per_range)), _MAX_RANGES)
    step = max(1, -(-(hi - lo + 1) // n))
    return [(a, min(a + step, hi + 1)) for a in range(lo, hi + 1, step)]


def in_order(ranges: list[tuple[int, int]],
             read: Callable[[int, int], Iterator[T]], readers: int = READERS) -> Iterator[T]:
    """Everything ``read(start, end)`` yields for each range, in range order, read by up to
    ``readers`` threads at once. At most ``readers + 1`` ranges are under way (started,
    not yet consumed), each holding at most _DEPTH items: memory stays bounded."""
    if readers <= 1 or len(ranges) <= 1:
        for start, end in ranges:
            yield from read(start, end)
        return
    queues: list[queue.Queue] = [queue.Queue(maxsize=_DEPTH) for _ in ranges]
    slots = threading.Semaphore(readers + 1)
    taken = iter(range(len(ranges)))
    lock = threading.Lock()
    stop = threading.Event()
    done = object()

    def put(q: queue.Queue, item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        while not stop.is_set():
            if not slots.acquire(timeout=0.2):
                continue
            with lock:
                k = next(taken, None)
            if k is None:
                return
            items = read(*ranges[k])
            try:
                for item in items:
                    if not put(queues[k], item):
                        return
                put(queues[k], done)
            except BaseException as e:  # noqa: BLE001 - handed to the consuming thread
                put(queues[k], e)
                return
            finally:
                close = getattr(items, "close", None)
                if close is not None:
                    close()  # an abandoned generator closes its reader now

    threads = [threading.Thread(target=work, name=f"export-read-{i}", daemon=True)
               for i in range(readers)]
    for t in threads:
        t.start()
    try:
        for q in queues:
            while (item := q.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                yield item
            slots.release()
    finally:
        stop.set()
        for t in threads:
            t.join()
