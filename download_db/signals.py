"""Stop requests: SIGTERM, SIGINT, SIGUSR1, SIGUSR2 (SGE -notify, Slurm --signal) set a flag."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An Event set by any stop signal while the block runs.

    The handler only sets the flag (logging or I/O in a handler is unsafe);
    the work loops check it at safe points: after a commit, between items.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signals can only be handled on the main thread
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}

    def handler(signum, frame) -> None:  # noqa: ARG001
        stop.set()

    for s in STOP_SIGNALS:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
