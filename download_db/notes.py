"""Slack notices of the other stages (ingest, merge, finalize) and of the job scripts."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from .db import runs
from .db.connection import connect
from .db.schema import migrate
from .db.sqlite import sqlite3
from .db.stagelock import stage_lock
from .errors import DownloadDbError, Interrupted, PrerequisiteFailed
from .notify import FLUSH_WAIT, Notifier, label_for, redact
from .progress import fmt_secs


def one_line(exc: BaseException) -> str:
    """The error as the runs table keeps it: type and message on one line."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


class StageNotes:
    """Start, end and failure of a database stage on Slack, by the download's rules:
    without a URL nothing happens; a post never blocks the stage; the URL is never shown."""

    def __init__(self, url: str | None, db: os.PathLike | str, stage: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.n = Notifier(url, label_for(db))
        self.stage = stage
        self.clock = clock
        self.t0 = clock()

    @property
    def enabled(self) -> bool:
        return self.n.enabled

    def _took(self) -> str:
        return fmt_secs(self.clock() - self.t0)

    def _clean(self, text: str) -> str:
        return redact(self.n.scrub(text), 300)

    def say(self, text: str) -> None:
        """A message of its own (a job script's event)."""
        self.n.send(self._clean(text))

    def start(self, what: str = "") -> None:
        self.t0 = self.clock()
        self.n.send(f":arrow_forward: {self.stage} started" + (f": {self._clean(what)}"
                                                              if what else ""))

    def finish(self, summary: str = "") -> None:
        self.n.send(f":checkered_flag: {self.stage} finished after {self._took()}"
                    + (f": {self._clean(summary)}" if summary else ""))

    def failed(self, exc: BaseException) -> None:
        """Interrupted (resumable), not run (its prerequisite failed), or failed with
        the one-line error."""
        if isinstance(exc, (KeyboardInterrupt, Interrupted)):
            self.n.send(f":stop_sign: {self.stage} interrupted after {self._took()} "
                        "(resumable: run the same command again)")
        elif isinstance(exc, PrerequisiteFailed):
            self.n.send(f":no_entry_sign: {self.stage} not run: {self._clean(str(exc))}")
        else:
            self.n.send(f":x: {self.stage} failed after {self._took()}: "
                        f"{self._clean(one_line(exc))}")

    def close(self, wait: float = FLUSH_WAIT) -> None:
        self.n.close(wait)


# What a job script tells through `gbif-download-db event` (scripts/common.sh): what
# the command itself cannot say, because it never ran or was killed.
EVENTS = {
    "submitted": ":rocket: pipeline submitted: {message}",
    "skipped": ":no_entry_sign: {unit} not run: a stage before it did not end ok: {message}",
    "killed": ":skull: {unit} killed: {message}",
    "ok": ":white_check_mark: pipeline ended, every stage ok: {message}",
    "failed": ":x: pipeline ended, a stage did not end ok: {message}",
}
LOCK_TRIES = 30  # one a second: N skipped array tasks record their rows one after another


def job_event(db: Path, event: str, unit: str, message: str, url: str) -> str | None:
    """Tell Slack what a job script saw; a skipped stage is also recorded in the runs
    table as prerequisite_failed. Returns a warning when the database could not take it
    (never raises for that: a job script's notice must not fail the job)."""
    notes = StageNotes(url, db, unit)
    try:
        notes.say(EVENTS[event].format(unit=unit, message=message))
        return _record_skip(db, unit, message) if event == "skipped" else None
    finally:
        notes.close()


def _record_skip(db: Path, unit: str, message: str) -> str | None:
    if not db.is_file():
        return f"no database at {db} yet: the skip of {unit} is recorded on Slack only"
    stage = unit.split(".", 1)[0]
    for attempt in range(LOCK_TRIES):
        try:
            # exclusive: no stage writes beside it; wal=None: a frozen database stays frozen
            with stage_lock(db, exclusive=True, what="gbif-download-db event"):
                conn = connect(db, wal=None)
                try:
                    migrate(conn)
                    runs.record_not_run(conn, stage, f"{unit} not run by its job script: a "
                                        f"stage before it did not end ok: {message}")
                finally:
                    conn.close()
            return None
        except DownloadDbError as e:
            if "is in use by" not in str(e) or attempt == LOCK_TRIES - 1:
                return f"the skip of {unit} is not recorded in {db}: {e}"
            time.sleep(1.0)
        except (sqlite3.Error, OSError) as e:
            return f"the skip of {unit} is not recorded in {db}: {one_line(e)}"
    return None
