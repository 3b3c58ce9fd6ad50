"""A database stage's frame: array check, lock, signals, migrated DB; a reader's runs row."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, TextIO, TypeVar

from .arrays.merge import refuse_if_tasks_running, task_running
from .db import runs
from .db.connection import connect
from .db.schema import migrate
from .db.sqlite import sqlite3
from .db.stagelock import stage_lock
from .errors import DownloadDbError, Interrupted, UsageError
from .progress import RunContext
from .signals import stop_on_signals

T = TypeVar("T")


def require_db_and_root(db: Path, install_path: Path) -> None:
    """The two paths a stage over saved files needs, named by their flags."""
    if not db.is_file():
        raise UsageError(f"--db {db}: no such database")
    if not install_path.is_dir():
        raise UsageError(f"--install-path {install_path}: no such directory")


class StageConfig(Protocol):
    db: Path
    bar: bool | None
    progress_every: float


@contextmanager
def open_stage(cfg: StageConfig, name: str, out: TextIO | None, *, exclusive: bool = False,
               refuse_arrays: str | None = None,
               force: bool = False) -> Iterator[tuple[sqlite3.Connection, RunContext]]:
    """Everything a stage of `gbif-download-db <name>` holds while it runs.

    refuse_arrays names what the stage does ("hashing") when it must not run while
    array tasks still write results (--force skips that check). exclusive: no
    downloader may run beside it (else the lock is shared with downloads)."""
    if refuse_arrays and not force:
        refuse_if_tasks_running(cfg.db, refuse_arrays)
    with stage_lock(cfg.db, exclusive=exclusive, what=f"gbif-download-db {name}"), \
            stop_on_signals() as stop:
        ctx = RunContext(out=out, bar=cfg.bar, every=cfg.progress_every, stop=stop)
        conn = connect(cfg.db)
        try:
            migrate(conn)
            yield conn, ctx
        finally:
            conn.close()


@contextmanager
def recorded_run(db: Path, stage: str, say: Callable[[str], None]) -> Iterator[dict]:
    """The runs row of a stage that only reads the database (derive, export), as every
    stage has one: started here; at the end its counts (the dict yielded, which the stage
    keeps current) and outcome: ok, or interrupted / failed with the one-line error, and
    the error goes on. The stage's own connection stays read-only: each write is a short
    one through a connection of its own, under the shared stage lock, that keeps the
    journal mode (a frozen database stays frozen). Nothing is written, and one line says
    why, while an array task may be running (tasks read the main database immutable, so
    nothing may write it) or when the database cannot be written (a read-only file or
    folder, an init stage holding it): the stage itself goes on, as it needs only to read."""
    counts: dict = {}
    run_id, why = _write_run(db, stage, lambda conn: runs.start_run(conn, stage))
    if why:
        say(f"{stage}: this run is not recorded in the runs table: {why}")
    try:
        yield counts
    except runs.ENDING_ERRORS as e:
        outcome, message = runs.ending(e)
        if run_id is not None:
            _write_run(db, stage, lambda conn: runs.finish_run(conn, run_id, outcome,
                                                                counts, message))
        if isinstance(e, KeyboardInterrupt):
            raise Interrupted("stopped by a signal; run the same command again") from None
        raise
    if run_id is not None:
        _, why = _write_run(db, stage, lambda conn: runs.finish_run(conn, run_id, runs.OK,
                                                                     counts))
        if why:
            say(f"{stage}: the end of run {run_id} is not recorded in the runs table: {why}")


def _write_run(db: Path, stage: str,
               write: Callable[[sqlite3.Connection], T]) -> tuple[T | None, str | None]:
    """(what ``write`` returned, None), or (None, why the database was not written)."""
    try:
        running = task_running(db)
        if running:
            return None, (f"array task {running} may be running, and nothing writes the "
                          "main database while an array reads it")
        with stage_lock(db, exclusive=False, what=f"recording the {stage} run"):
            conn = connect(db, wal=None, busy_timeout_s=10.0)
            try:
                return write(conn), None
            finally:
                conn.close()
    except (DownloadDbError, sqlite3.Error, OSError) as e:
        return None, " ".join(str(e).split())
