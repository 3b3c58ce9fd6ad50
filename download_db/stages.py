"""The frame a database stage runs in: array check, lock, signals, run context, migrated DB."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, TextIO

from .arrays.merge import refuse_if_tasks_running
from .db.connection import connect
from .db.schema import migrate
from .db.sqlite import sqlite3
from .db.stagelock import stage_lock
from .errors import UsageError
from .progress import RunContext
from .signals import stop_on_signals


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
