"""Concurrency slots as locked files: holding slot k's flock is holding it, in every process."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable
from pathlib import Path

# Slot files kept open between requests (an open and a close per request cost more than
# the flock itself); bounded well inside the usual 1024 open files, however many hosts.
IDLE_SLOT_FDS = 256

NO_SLOT = (-1, -1)


class SlotFiles:
    """A host's slots 0..most-1 are files `<name>.s<k>` in the lock directory. take()
    locks the first free one without blocking; slots this process's threads hold are
    skipped without a system call (flock would refuse them anyway: each thread's slot
    is its own open file)."""

    def __init__(self, directory: Path, name: Callable[[str], str]) -> None:
        self.dir, self._name = directory, name
        self._lock = threading.Lock()
        self._idle: dict[str, dict[int, int]] = {}  # open, unlocked: ours to try
        self._busy: dict[str, set[int]] = {}  # held by a thread of this process
        self._n_idle = 0

    def take(self, host: str, most: int) -> tuple[int, int]:
        """(fd, k) of a slot now locked by us, or NO_SLOT when all `most` are held."""
        with self._lock:
            idle = self._idle.setdefault(host, {})
            busy = self._busy.setdefault(host, set())
            for k in range(most):
                if k in busy:
                    continue
                fd = idle.pop(k, -1)
                if fd < 0:
                    fd = os.open(self.dir / f"{self._name(host)}.s{k}",
                                 os.O_RDWR | os.O_CREAT, 0o644)
                else:
                    self._n_idle -= 1
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # another process holds it
                    self._keep(idle, k, fd)
                    continue
                busy.add(k)
                return fd, k
        return NO_SLOT

    def free(self, host: str, slot: tuple[int, int]) -> None:
        fd, k = slot
        fcntl.flock(fd, fcntl.LOCK_UN)
        with self._lock:
            self._busy[host].discard(k)
            self._keep(self._idle[host], k, fd)

    def _keep(self, idle: dict[int, int], k: int, fd: int) -> None:
        if self._n_idle < IDLE_SLOT_FDS:
            idle[k] = fd
            self._n_idle += 1
        else:
            os.close(fd)

    def close(self) -> None:
        """Close the idle files (slots still held close when they are freed)."""
        with self._lock:
            for idle in self._idle.values():
                for fd in idle.values():
                    os.close(fd)
            self._idle.clear()
            self._n_idle = 0
