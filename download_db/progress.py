"""Progress of every stage: a live bar on a terminal, a throttled one-line log in batch jobs."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from tqdm import tqdm

from .errors import Interrupted


def fmt_secs(s: float) -> str:
    s = int(max(s, 0))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def human_bytes(n: float) -> str:
    """Decimal units, as disks and networks count them: 999 B, 1.0 kB, 12.3 MB."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:,.0f} B" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"


class Progress:
    """A position against a total, and items done; renders a bar or log lines.

    The position is input bytes read (ingest, legacy) or, with ``counting``, the
    items themselves (finalize, download). A caller with figures of its own (the
    download's saved/failed/deferred counts and rates) passes them as ``detail``.
    ``every`` is the minimum interval between log lines when not on a terminal,
    so SGE/Slurm .o files get a readable line every few seconds, not a flood.
    """

    def __init__(self, label: str, total: int | None, *, start_bytes: int = 0,
                 item: str = "rows", every: float = 10.0, stream: TextIO | None = None,
                 bar: bool | None = None, counting: bool = False, word: str = "done",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.word = word  # what the position counts, in log lines: "done", "saved"
        self.counting = counting
        self.total = total
        self.item = item
        self.every = every
        self.stream = stream or sys.stdout
        self.clock = clock
        self.t0 = clock()
        self.start_bytes = start_bytes
        self.done_bytes = start_bytes
        self.items = 0
        self.detail: str | None = None
        self._last_log = self.t0
        use_bar = self.stream.isatty() if bar is None else bar
        self._bar = (tqdm(total=total, initial=start_bytes,
                          unit=item if counting else "B", unit_scale=not counting,
                          desc=label, file=self.stream, dynamic_ncols=True)
                     if use_bar else None)

    def rate(self) -> float:
        return self.items / max(self.clock() - self.t0, 1e-9)

    def eta(self) -> float | None:
        """Seconds left at the pace so far; None before any progress or once done."""
        read = self.done_bytes - self.start_bytes
        if not self.total or read <= 0 or self.done_bytes >= self.total:
            return None
        return (self.clock() - self.t0) * (self.total - self.done_bytes) / read

    def update(self, done_bytes: int, items: int, detail: str | None = None) -> None:
        self.items += items
        if detail is not None:
            self.detail = detail
        if self._bar is not None:
            self._bar.update(done_bytes - self.done_bytes)
            self._bar.set_postfix_str(self.detail or f"{self.items:,} {self.item}, "
                                                     f"{self.rate():,.0f}/s", refresh=False)
        self.done_bytes = done_bytes
        now = self.clock()
        if self._bar is None and now - self._last_log >= self.every:
            self._last_log = now
            say(self.line(), self.stream)

    def line(self) -> str:
        eta = self.eta()
        eta_s = f", ETA {fmt_secs(eta)}" if eta is not None else ""
        if self.detail is not None:
            return (f"{self.label}: {self.done_bytes:,}/{self.total or 0:,} {self.word}; "
                    f"{self.detail}{eta_s}")
        if self.counting:
            pct = f" ({100 * self.items / self.total:.1f}%)" if self.total else ""
            return (f"{self.label}: {self.items:,}{f' / {self.total:,}' if self.total else ''} "
                    f"{self.item}{pct}, {self.rate():,.0f} {self.item}/s{eta_s}")
        pct = f" ({100 * self.done_bytes / self.total:.1f}%)" if self.total else ""
        total = f" / {human_bytes(self.total)}" if self.total else ""
        return (f"{self.label}: {human_bytes(self.done_bytes)}{total}{pct} read, "
                f"{self.items:,} {self.item}, {self.rate():,.0f} {self.item}/s{eta_s}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


@dataclass(frozen=True)
class RunContext:
    """What a stage's long loops share, built once per run and handed down: where
    lines go, bar or log lines, the log interval, and the stop flag of the signals."""

    out: TextIO | None = None
    bar: bool | None = None
    every: float = 10.0
    stop: threading.Event = field(default_factory=threading.Event)

    def progress(self, label: str, total: int | None, **kw) -> Progress:
        return Progress(label, total, every=self.every, stream=self.out, bar=self.bar, **kw)

    def say(self, msg: str) -> None:
        say(msg, self.out)

    def check_stop(self) -> None:
        """Raise Interrupted at a safe point (after a commit) once a stop was asked for."""
        if self.stop.is_set():
            raise Interrupted("stopped by a signal")


def say(msg: str, stream: TextIO | None = None) -> None:
    """One flushed line (SGE .o files only update on flush)."""
    print(msg, file=stream or sys.stdout, flush=True)
