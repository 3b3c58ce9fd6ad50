"""Free space and a writable image root: checked before the first write and during a run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import StorageError
from ..progress import human_bytes

MIN_FREE_SHARE = 0.05  # of the filesystem's size
MIN_FREE_FLOOR = 10 * 10**9  # 10 GB: even a small disk keeps room for the database
CHECK_EVERY = 200  # finished images between two checks during a run


def disk_usage(path: Path) -> tuple[int, int]:
    """(free bytes for us, total bytes) of the filesystem holding path; the one probe
    (tests replace it)."""
    u = shutil.disk_usage(path)
    return u.free, u.total


def min_free_for(total: int, min_free: int | None) -> int:
    """The floor for one filesystem: --min-free as given, else the larger of 5 % of its
    size and 10 GB."""
    if min_free is not None:
        return min_free
    return max(int(total * MIN_FREE_SHARE), MIN_FREE_FLOOR)


def low_space(places: dict[str, Path], min_free: int | None) -> str | None:
    """A one-line reason when a place (label -> path) has less free space than its floor,
    else None. --min-free 0 turns the check off."""
    if min_free == 0:
        return None
    for label, path in places.items():
        free, total = disk_usage(path)
        floor = min_free_for(total, min_free)
        if free < floor:
            return (f"low disk space {label} ({path}): {human_bytes(free)} free, below "
                    f"--min-free {human_bytes(floor)}; free some space (or lower --min-free) "
                    "and run the same command again")
    return None


def prepare_root(root: Path) -> None:
    """Create the image root if missing and prove it takes a file, or say why not, naming
    --install-path (a read-only root used to surface only at the first save)."""
    if root.exists() and not root.is_dir():
        raise StorageError(f"--install-path {root} is a file, not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"--install-path {root}: cannot create it: "
                           f"{e.strerror or e}") from None
    probe = root / f".write-test.{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"x")
        probe.unlink()
    except OSError as e:
        raise StorageError(f"--install-path {root} cannot be written: "
                           f"{e.strerror or e}") from None
