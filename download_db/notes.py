"""Slack notices of the other stages (ingest, merge, finalize) and of the job scripts."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from .errors import Interrupted, PrerequisiteFailed
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
