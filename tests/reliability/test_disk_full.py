"""Disk full and read-only image roots: the downloader stops with one line and exit 73
(README, exit codes), and loses nothing it committed.

Two ways to make the image root unwritable, each test runs both where it can:

* ``tmpfs``: a real 2 MiB tmpfs mounted on the image root (needs CAP_SYS_ADMIN, which
  root in a privileged container has), remounted read-only or larger as needed;
* ``simulated``: the real downloader started through a wrapper that makes the image
  store's file writes fail with ENOSPC after a byte budget, or with EROFS at once (what
  a full or read-only filesystem does to write()). It runs everywhere.

We run as root, so directory permissions cannot make a path unwritable.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from download_db.cli.main import init_main
from tests.helpers import q, row, write_multimedia
from tests.imageserver import ImageServer
from tests.reliability._support import (
    PY,
    ROOT,
    SOAK,
    download_cmd,
    error_lines,
    final_files,
    integrity,
    run,
    temp_files,
)

pytestmark = pytest.mark.timeout(120 * SOAK)

N = 40  # 600x800 JPEGs, saved as ~70 KB JPEGs: a 1 MiB root fills after ~14
SIZE = "1m"

_WRAPPER = """
import builtins, errno, os, sys, threading
import download_db.files.store as store

budget = int(os.environ["SIM_BUDGET"])
code = getattr(errno, os.environ["SIM_ERRNO"])
used = [0]
lock = threading.Lock()
real_open = builtins.open


class _Full:
    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        with lock:
            if used[0] + len(data) > budget:
                raise OSError(code, os.strerror(code))
            used[0] += len(data)
        return self.f.write(data)


def _open(path, mode="r", *a, **k):
    f = real_open(path, mode, *a, **k)
    return _Full(f) if "w" in mode or "a" in mode else f


store.open = _open  # the image store's writes only; the database is elsewhere
from download_db.cli.main import download_main
sys.exit(download_main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def server():
    with ImageServer("127.0.0.22") as s:
        yield s


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[bool]:
    """Mount a tmpfs of ``size`` on path; yields False when mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                        str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextmanager
def unwritable(root: Path, mode: str) -> Iterator[None]:
    """tmpfs: a SIZE tmpfs on root (skip if mounting is not allowed); simulated: a plain
    directory (the caller starts the downloader through _WRAPPER)."""
    if mode == "simulated":
        root.mkdir(parents=True, exist_ok=True)
        yield
        return
    with tmpfs(root, SIZE) as mounted:
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN); the simulated variant "
                        "covers the downloader's side")
        yield


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True,
                   capture_output=True)


def make_db(tmp_path: Path, server: ImageServer, tag: str) -> Path:
    urls = [server.url(f"/img/{tag}{i}.jpg?w=600") for i in range(N)]
    mm = write_multimedia(tmp_path / "m.txt", [row(8_000_000_000 + i, u)
                                               for i, u in enumerate(urls)])
    db = tmp_path / "db" / "d.db"
    db.parent.mkdir()
    assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    return db


def the_one_error(r, root: Path, says: str = "cannot write under {root}: ") -> str:
    assert r.returncode == 73, f"exit {r.returncode}: {r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    lines = error_lines(r.stderr)
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("image_install_db.py: error: " + says.format(root=root)), \
        lines[0]
    return lines[0]


def assert_nothing_lost(db: Path, root: Path) -> dict[str, str]:
    """Every committed success has its final file with the recorded bytes, no final file
    lacks its row, no claim is left, and nobody was charged a failure for our disk."""
    rows = q(db, "SELECT status, file_path, sha256, attempts, claimed_by FROM images")
    files = final_files(root)
    ok = {fp: digest for status, fp, digest, _a, _c in rows if status == "success"}
    assert files == ok, (set(files) ^ set(ok))
    assert {r[0] for r in rows} <= {"success", "pending"}, {r[0] for r in rows}
    assert all(r[3] == 0 for r in rows if r[0] == "pending"), "a disk problem cost an attempt"
    assert all(r[4] is None for r in rows), "claims left behind"
    assert not temp_files(root), temp_files(root)
    assert integrity(db) == "ok"
    return ok


@pytest.mark.parametrize("mode", ["tmpfs", "simulated"])
def test_disk_full_mid_run_stops_cleanly_and_loses_nothing(tmp_path, server, mode) -> None:
    db = make_db(tmp_path, server, f"full-{mode}-")
    root = tmp_path / "images"
    # --min-free 0: the free-space check would stop the run before its writes fail (see
    # tests/test_space.py); this test is about a write that fails
    base = download_cmd(db, root, tmp_path / "locks", "--threads", "4", "--min-free", "0")
    with unwritable(root, mode):
        cmd, env = base, None
        if mode == "simulated":
            cmd, env = [PY, "-c", _WRAPPER, *base[2:]], {**os.environ, "SIM_ERRNO": "ENOSPC",
                                                         "SIM_BUDGET": str(1 << 20)}
        server.reset_stats()
        r = run(cmd, env=env, cwd=ROOT)
        msg = the_one_error(r, root.resolve())
        assert "No space left on device" in msg
        saved = assert_nothing_lost(db, root)
        assert 0 < len(saved) < N, "the disk was meant to fill mid-run"
        assert q(db, "SELECT outcome, message LIKE '%cannot write under%' FROM runs "
                     "WHERE stage = 'download'") == [("failed", 1)]
        # make room and run again: it finishes, and fetches nothing it had committed
        if mode == "tmpfs":
            remount(root, "size=64m")
        again = run(base, cwd=ROOT)
        assert again.returncode == 0, again.stderr
        done = assert_nothing_lost(db, root)
        assert len(done) == N
        by_path = server.stats()["by_path"]
        for fp in saved:
            gid = int(fp.rsplit("/", 1)[1].split("-")[0])
            assert by_path[f"/img/full-{mode}-{gid - 8_000_000_000}.jpg"] == 1, fp


@pytest.mark.parametrize("mode", ["tmpfs", "simulated"])
def test_read_only_image_root_stops_at_once(tmp_path, server, mode) -> None:
    db = make_db(tmp_path, server, f"ro-{mode}-")
    root = tmp_path / "images"
    base = download_cmd(db, root, tmp_path / "locks", "--threads", "4")
    with unwritable(root, mode):
        cmd, env = base, None
        if mode == "simulated":
            cmd, env = [PY, "-c", _WRAPPER, *base[2:]], {**os.environ, "SIM_ERRNO": "EROFS",
                                                         "SIM_BUDGET": "0"}
        else:
            remount(root, "ro")
        r = run(cmd, env=env, cwd=ROOT)
        # a read-only mount is refused at start, before anything is claimed; the simulated
        # one fails only on the image writes themselves
        msg = the_one_error(r, root.resolve(), "cannot write under {root}: " if
                            mode == "simulated" else "--install-path {root} cannot be written: ")
        assert "Read-only file system" in msg
        assert_nothing_lost(db, root)
        assert q(db, "SELECT status, count(*), max(attempts) FROM images GROUP BY status") == \
            [("pending", N, 0)]
        assert not final_files(root)
