"""The downloader as a real process: kill -9 at any moment, SIGTERM, two processes at once."""

from __future__ import annotations

import hashlib
import signal
import sqlite3 as stdlib_sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from download_db.cli.main import init_main
from tests.helpers import q, row, write_multimedia
from tests.imageserver import ImageServer

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def server():
    with ImageServer("127.0.0.5") as s:
        yield s


def build(tmp_path: Path, urls: list[str]) -> Path:
    mm = write_multimedia(tmp_path / "m.txt", [row(2_000_000_000 + i, u)
                                               for i, u in enumerate(urls)])
    db = tmp_path / "d.db"
    assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    return db


def cmd(tmp_path: Path, db: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "image_install_db.py"), "--db", str(db), "--install-path",
            str(tmp_path / "images"), "--lock-dir", str(tmp_path / "locks"), "--no-bar",
            "--per-host-rate", "0", "--timeout", "2,2", "--deadline", "5", "--lease", "30",
            "--wait-for-retries", "0", "--progress-every", "1000", "--contact", "tests@example.org",
            *extra]


def final_files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".")}


def assert_no_file_without_its_row(db: Path, root: Path) -> None:
    rows = dict(q(db, "SELECT file_path, status FROM images WHERE file_path IS NOT NULL"))
    for rel in final_files(root):
        assert rows.get(rel) == "success", f"{rel} on disk without a success row"


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_minus_9_at_any_moment_loses_nothing(tmp_path, server, seed) -> None:
    n = 120
    urls = [server.url(f"/slow/k{seed}-{i}.jpg?delay=0.2&w=300&h=400") for i in range(n)]
    db = build(tmp_path, urls)
    root = tmp_path / "images"
    server.reset_stats()
    kills = 0
    runs = "SELECT count(*) FROM runs WHERE stage = 'download'"
    for attempt in range(4):
        (before,), = q(db, runs)
        p = subprocess.Popen(cmd(tmp_path, db, "--threads", "8", "--per-host-concurrency", "8"),
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Time the kill from the run's start, not the process's: on a loaded machine a
        # start-up can outlast a fixed delay, and a kill before the run exists tests nothing.
        started = time.monotonic() + 30
        while p.poll() is None and q(db, runs) == [(before,)] and time.monotonic() < started:
            time.sleep(0.01)
        time.sleep(0.3 + 0.25 * ((seed * 3 + attempt) % 4))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
        assert_no_file_without_its_row(db, root)
    final = subprocess.run(cmd(tmp_path, db, "--threads", "8", "--per-host-concurrency", "8"),
                           cwd=ROOT, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert kills >= 1
    rows = q(db, "SELECT status, file_path, sha256, file_size, claimed_by FROM images")
    assert all(r[0] == "success" and r[4] is None for r in rows), rows[:3]
    files = final_files(root)
    assert len(files) == n == len({r[1] for r in rows})
    for _, rel, sha, size, _ in rows:
        data = files[rel].read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha)
    assert not list(root.rglob("*.part")), "orphan temp files after the final run"
    # each image was fetched; a second fetch only for downloads cut off by a kill
    by_path = server.stats()["by_path"]
    fetched = [by_path.get(f"/slow/k{seed}-{i}.jpg", 0) for i in range(n)]
    assert min(fetched) >= 1
    assert sum(f - 1 for f in fetched) <= kills * 8
    assert q(db, "SELECT count(*) FROM runs WHERE stage='download' AND outcome='crashed'") \
        == [(kills,)]
    c = stdlib_sqlite3.connect(db)
    assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    c.close()


def test_sigterm_stops_within_seconds_and_releases_claims(tmp_path, server) -> None:
    urls = [server.url(f"/slow/t{i}.jpg?delay=3&w=64&h=64") for i in range(30)]
    db = build(tmp_path, urls)
    p = subprocess.Popen(cmd(tmp_path, db, "--threads", "4"), cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert time.monotonic() - t0 < 5
    assert "Traceback" not in err
    assert q(db, "SELECT count(*) FROM images WHERE claimed_by IS NOT NULL") == [(0,)]
    assert q(db, "SELECT outcome FROM runs WHERE stage='download'") == [("interrupted",)]
    # nothing was counted against the images interrupted in flight
    assert q(db, "SELECT max(attempts) FROM images WHERE status='pending'") == [(0,)]
    assert not list((tmp_path / "images").rglob("*.part"))


def test_two_processes_never_fetch_the_same_image(tmp_path) -> None:
    n = 60
    with ImageServer("127.0.0.6") as server:  # its own server: no stragglers from other tests
        urls = [server.url(f"/slow/two{i}.jpg?delay=0.1&w=64&h=64") for i in range(n)]
        db = build(tmp_path, urls)
        procs = [subprocess.Popen(cmd(tmp_path, db, "--threads", "6", "--per-host-concurrency",
                                      "3"), cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for _ in range(2)]
        for p in procs:
            assert p.wait(timeout=120) == 0, p.stderr.read() if p.stderr else ""
        stats = server.stats()
    assert [stats["by_path"].get(f"/slow/two{i}.jpg") for i in range(n)] == [1] * n
    assert stats["max_concurrent"] <= 3  # the per-host limit held across both processes
    assert q(db, "SELECT status, count(*) FROM images GROUP BY status") == [("success", n)]
    ok = q(db, "SELECT count(*) FROM runs WHERE stage='download' AND outcome='ok'")
    assert ok == [(2,)]


def test_processes_flag_runs_several_claimers(tmp_path, server) -> None:
    n = 40
    urls = [server.url(f"/slow/pf{i}.jpg?delay=0.05&w=64&h=64") for i in range(n)]
    db = build(tmp_path, urls)
    server.reset_stats()
    r = subprocess.run(cmd(tmp_path, db, "--threads", "4", "--processes", "2"), cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert q(db, "SELECT count(*) FROM runs WHERE stage='download'") == [(2,)]
    assert q(db, "SELECT status, count(*) FROM images GROUP BY status") == [("success", n)]
    assert [server.stats()["by_path"].get(f"/slow/pf{i}.jpg") for i in range(n)] == [1] * n


def test_cli_errors_are_one_line(tmp_path) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "image_install_db.py"), "--db",
                        str(tmp_path / "missing.db")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 3 and "database not found" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "image_install_db.py"), "--threads", "0"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 64 and "--threads" in r.stderr


def test_max_images_is_shared_out_over_processes(tmp_path, server) -> None:
    urls = [server.url(f"/img/share{i}.jpg?w=64&h=64") for i in range(30)]
    db = build(tmp_path, urls)
    r = subprocess.run(cmd(tmp_path, db, "--processes", "3", "--max-images", "10"), cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert q(db, "SELECT count(*) FROM images WHERE status = 'success'") == [(10,)]


def test_init_refuses_while_downloads_run_and_says_so(tmp_path, server) -> None:
    from download_db.db.stagelock import stage_lock

    db = build(tmp_path, [server.url("/img/lock.jpg")])
    with stage_lock(db, exclusive=False, what="image_install_db.py"):
        r = subprocess.run([sys.executable, str(ROOT / "init_download_db.py"), "--db", str(db),
                            "--finalize-only"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 3
    assert "running downloads (image_install_db.py)" in r.stderr


def test_unwritable_image_root_stops_with_one_line_and_loses_nothing(tmp_path, server) -> None:
    urls = [server.url(f"/img/full{i}.jpg?w=64&h=64") for i in range(5)]
    db = build(tmp_path, urls)
    (tmp_path / "images").write_text("a file where the image root should be")
    r = subprocess.run(cmd(tmp_path, db), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert q(db, "SELECT status, count(*) FROM images GROUP BY status") == [("pending", 5)]
    assert q(db, "SELECT count(*) FROM images WHERE claimed_by IS NOT NULL") == [(0,)]
