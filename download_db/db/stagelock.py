"""Who may use a database: init stages exclusively, downloaders shared (flock on <db>.lock)."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import DatabaseError


def _holder(fd: int) -> str:
    """Who holds the lock: downloaders hold it shared (a shared request succeeds
    then), an init stage exclusively (and wrote its name into the file)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
    fcntl.flock(fd, fcntl.LOCK_UN)
    return "running downloads (image_install_db.py)"


def lock_path(db: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(db)}.lock")


@contextmanager
def stage_lock(db: str | os.PathLike, *, exclusive: bool, what: str) -> Iterator[None]:
    """Hold the database's stage lock; fail at once with who holds it.

    Init stages (build, reset, legacy, finalize) take it exclusively: two of
    them, or one while downloads run, would corrupt the work of the other.
    """
    path = lock_path(db)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatabaseError(f"{db} is in use by {_holder(fd)}; {what} cannot run at the "
                                "same time (wait for it to finish, or stop it)") from None
        if exclusive:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{what} (host {socket.gethostname()}, pid {os.getpid()})".encode(), 0)
        yield
    finally:
        _drop_if_no_database(db, path, fd)
        os.close(fd)  # releases the lock


def _drop_if_no_database(db: str | os.PathLike, path: Path, fd: int) -> None:
    """A command that failed before the database existed (a wrong --db, input refused)
    leaves no <db>.lock behind; removed only when nobody else holds it."""
    if os.path.exists(db):
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink()
    except OSError:
        pass  # someone else holds it, or it is gone already
