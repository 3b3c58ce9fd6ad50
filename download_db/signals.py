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
        # Event.set takes a lock that is not reentrant: a second signal landing
        # while the main thread is inside set() (scancel and SGE -notify signal
        # the whole process group, so two copies arrive at once) would deadlock.
        # A helper thread sets the flag instead, after this handler returns.
        if not stop.is_set():
            threading.Thread(target=stop.set, name="stop-signal", daemon=True).start()

    for s in STOP_SIGNALS:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        # A stop that arrives while the process winds down (its work is
        # committed) must not kill it with the default action and a failure
        # exit code; SIGINT keeps Ctrl-C working for an interactive user.
        for s, h in previous.items():
            signal.signal(s, signal.SIG_IGN if h is signal.SIG_DFL and
                          s != signal.SIGINT else h)
