"""Progress output: a live bar on a terminal, a throttled one-line log in batch jobs."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


def fmt_secs(s: float) -> str:
    s = int(max(s, 0))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


class Progress:
    """Tracks bytes of input read and items done; renders a bar or log lines.

    ``every`` is the minimum interval between log lines when not on a terminal,
    so SGE/Slurm .o files get a readable line every few seconds, not a flood.
    """

    def __init__(self, label: str, total_bytes: int | None, *, start_bytes: int = 0,
                 item: str = "rows", every: float = 10.0, stream: TextIO | None = None,
                 bar: bool | None = None, counting: bool = False) -> None:
        self.label = label
        self.counting = counting  # the total counts items, not input bytes
        self.total = total_bytes
        self.item = item
        self.every = every
        self.stream = stream or sys.stdout
        self.t0 = time.monotonic()
        self.start_bytes = start_bytes
        self.done_bytes = start_bytes
        self.items = 0
        self._last_log = self.t0
        use_bar = self.stream.isatty() if bar is None else bar
        self._bar = (tqdm(total=total_bytes, initial=start_bytes,
                          unit=item if counting else "B", unit_scale=not counting,
                          desc=label, file=self.stream, dynamic_ncols=True)
                     if use_bar else None)

    def rate(self) -> float:
        return self.items / max(time.monotonic() - self.t0, 1e-9)

    def eta(self) -> float | None:
        read = self.done_bytes - self.start_bytes
        if not self.total or read <= 0:
            return None
        elapsed = time.monotonic() - self.t0
        return elapsed * (self.total - self.done_bytes) / read

    def update(self, done_bytes: int, items: int) -> None:
        self.items += items
        if self._bar is not None:
            self._bar.update(done_bytes - self.done_bytes)
            self._bar.set_postfix_str(f"{self.items:,} {self.item}, {self.rate():,.0f}/s",
                                      refresh=False)
        self.done_bytes = done_bytes
        now = time.monotonic()
        if self._bar is None and now - self._last_log >= self.every:
            self._last_log = now
            self.log_line()

    def log_line(self) -> None:
        if self.counting:
            pct = f" ({100 * self.items / self.total:.1f}%)" if self.total else ""
            eta = self.eta()
            print(f"{self.label}: {self.items:,}{f' / {self.total:,}' if self.total else ''} "
                  f"{self.item}{pct}, {self.rate():,.0f} {self.item}/s"
                  + (f", ETA {fmt_secs(eta)}" if eta is not None else ""),
                  file=self.stream, flush=True)
            return
        pct = f" ({100 * self.done_bytes / self.total:.1f}%)" if self.total else ""
        total = f" / {_fmt_bytes(self.total)}" if self.total else ""
        eta = self.eta()
        eta_s = f", ETA {fmt_secs(eta)}" if eta is not None else ""
        print(f"{self.label}: {_fmt_bytes(self.done_bytes)}{total}{pct} read, "
              f"{self.items:,} {self.item}, {self.rate():,.0f} {self.item}/s{eta_s}",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def say(msg: str, stream: TextIO | None = None) -> None:
    """One flushed line (SGE .o files only update on flush)."""
    print(msg, file=stream or sys.stdout, flush=True)
