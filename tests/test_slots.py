"""web/slots.py: slot files shared by threads and processes, kept open between requests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from download_db.web import slots
from download_db.web.slots import NO_SLOT, SlotFiles

HOST = "images.example.org"


def files(tmp_path: Path) -> SlotFiles:
    d = tmp_path / "locks"
    d.mkdir(exist_ok=True)
    return SlotFiles(d, lambda host: "h" + host.replace(".", "_"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_each_take_gets_its_own_slot_until_all_are_held(tmp_path) -> None:
    s = files(tmp_path)
    got = [s.take(HOST, 3) for _ in range(3)]
    assert sorted(k for _fd, k in got) == [0, 1, 2]
    assert s.take(HOST, 3) == NO_SLOT
    s.free(HOST, got[1])
    again = s.take(HOST, 3)
    assert again == got[1]  # the same slot, on the file kept open: no new open
    for slot in (got[0], again, got[2]):
        s.free(HOST, slot)
    s.close()


def test_a_slot_held_by_another_process_is_skipped(tmp_path) -> None:
    s = files(tmp_path)
    path = s.dir / "himages_example_org.s0"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | "
         "os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); "
         "sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        first = s.take(HOST, 2)
        assert first[1] == 1
        assert s.take(HOST, 2) == NO_SLOT  # 0 is the other process's, 1 is ours
        s.free(HOST, first)
    finally:
        holder.stdin.close()
        holder.wait(10)
    assert s.take(HOST, 2)[1] == 0  # the other process let go
    s.close()


def test_idle_files_stay_open_only_up_to_the_bound(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(slots, "IDLE_SLOT_FDS", 2)
    s = files(tmp_path)
    before = open_fds()
    held = [s.take(f"host{k}.example.org", 1) for k in range(5)]
    assert open_fds() == before + 5
    for k, slot in enumerate(held):
        s.free(f"host{k}.example.org", slot)
    assert open_fds() == before + 2  # the rest were closed, not kept
    s.close()
    assert open_fds() == before
