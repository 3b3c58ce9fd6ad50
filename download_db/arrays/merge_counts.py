"""A merge batch's counter changes, counted on a second core from the rows the batch found."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from ..db.connection import PROGRESS_STEPS, readonly_uri
from ..db.meta import get_meta
from ..db.sqlite import sqlite3
from ..db.tallies import change_counts

# What the merge changes in the counters, described by the counters themselves;
# host_id is the one column the merge keeps from the main row.
CHANGES = change_counts(unchanged=("host_id",))


def disjoint(conn: sqlite3.Connection, names: list[str]) -> bool:
    """Whether the attached task databases hold disjoint sets of images: distinct
    tasks of one array plan (hosts, and the parts of a split host, go to one task
    each). Counting from a snapshot is exact only then; two tasks holding one row
    would each be counted against the row as it was."""
    arrays, shards = set(), set()
    for name in names:
        row = dict(conn.execute(f"SELECT key, value FROM {name}.meta WHERE key IN "
                                "('array_id', 'task_shard')").fetchall())
        arrays.add(row.get("array_id"))
        shards.add(row.get("task_shard"))
    return None not in arrays and None not in shards and len(arrays) == 1 \
        and len(shards) == len(names)


def wal_mode(conn: sqlite3.Connection) -> bool:
    return str(conn.execute("PRAGMA main.journal_mode").fetchone()[0]).lower() == "wal"


class ChangeCounter(threading.Thread):
    """Counts, on its own read-only connection, what the merge of the attached
    tasks' rows does to the counters, while the writer merges them: the old side
    from a read transaction begun after the writer's BEGIN IMMEDIATE (in WAL mode
    the writer's uncommitted pages are invisible to it, so it sees the rows as the
    batch found them, whenever it reads them), the new side from the tasks. The
    writer applies changes() before it commits. SQLite releases the GIL while a
    statement runs, so this is a second core's work: the counting no longer rides
    on every row the writer updates (the temp trigger cost ~30 % of a merge)."""

    def __init__(self, db: Path, tasks: list[tuple[str, Path]], lo: int, hi: int,
                 done: str, stop: Callable[[], bool]) -> None:
        super().__init__(name="merge-counter", daemon=True)
        self.db, self.tasks, self.ids, self.done = db, tasks, {"lo": lo, "hi": hi}, done
        self._stop_requested = stop
        self._abort = threading.Event()
        self._rows: list[list[tuple]] | None = None
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = sqlite3.connect(readonly_uri(self.db), uri=True, timeout=60,
                                   isolation_level=None, check_same_thread=False)
            try:
                self._rows = self._count(conn)
            finally:
                conn.close()
        except BaseException as e:  # noqa: BLE001 - handed to the writer by changes()
            self._error = e

    def _stopping(self) -> bool:
        return self._abort.is_set() or self._stop_requested()

    def _count(self, conn: sqlite3.Connection) -> list[list[tuple]]:
        for name, path in self.tasks:
            conn.execute(f"ATTACH DATABASE ? AS {name}", (readonly_uri(path),))
        # after the ATTACHes: an interrupted ATTACH says "unable to open database"
        conn.set_progress_handler(self._stopping, PROGRESS_STEPS)
        conn.execute("BEGIN")
        get_meta(conn, "schema_version")  # the snapshot starts at the first read
        for c in CHANGES:
            conn.execute(c.create)
        for name, _ in self.tasks:
            from_where = (f"FROM {name}.images AS new JOIN main.images AS old "
                          f"ON old.image_id = new.image_id WHERE {self.done} "
                          "AND new.last_attempt_at IS NOT old.last_attempt_at")
            for c in CHANGES:
                conn.execute(c.count.format(from_where=from_where), self.ids)
        rows = [conn.execute(c.read).fetchall() for c in CHANGES]
        conn.execute("COMMIT")
        return rows

    def changes(self) -> list[tuple[str, list[tuple]]]:
        """Wait for the count; the writer's (statement, parameter rows) to apply it.
        Raises what the count raised (an interrupt when a stop was requested)."""
        self.join()
        if self._error is not None:
            raise self._error
        assert self._rows is not None
        return [u for c, rows in zip(CHANGES, self._rows, strict=True) for u in c.apply(rows)]

    def abort(self) -> None:
        """Stop counting (the writer failed) and wait for the thread."""
        self._abort.set()
        self.join()
