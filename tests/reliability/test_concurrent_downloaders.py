"""Two downloader processes on one database for several seconds, with readers looping
beside them: no `database is locked` anywhere, no image fetched twice, every image done
exactly once.

Readers are ``Loop``s (tests/reliability/_support.py): each runs one command over and over
while the downloaders work and keeps every run's exit code and output. To add a reader
(for example the status report), append one more command to ``reader_commands``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest

from download_db.cli.main import init_main
from tests.helpers import q, row, write_multimedia
from tests.imageserver import ImageServer
from tests.reliability._support import (
    PY,
    ROOT,
    SOAK,
    Loop,
    download_cmd,
    final_files,
    integrity,
    temp_files,
)

pytestmark = pytest.mark.timeout(180 * SOAK)

N = 500 * SOAK  # images: the two downloaders need about 5 s for them
DELAY = 0.05  # seconds each image takes the server


def adhoc_sql_cmd(db: Path) -> list[str]:
    """The README's read-only ad hoc query, as an operator would run it during downloads."""
    code = ("import sqlite3, sys; c = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', "
            "uri=True); [print(*r, sep='\\t') for r in c.execute(sys.argv[2])]")
    return [PY, "-c", code, str(db),
            "SELECT status, count(*) FROM images GROUP BY status UNION ALL "
            "SELECT status, count(*) FROM gbif_ids GROUP BY status"]


def reader_commands(db: Path) -> list[list[str]]:
    """Commands looped beside the downloaders for as long as they run."""
    return [adhoc_sql_cmd(db),
            [sys.executable, str(ROOT / "status_report.py"), "--db", str(db), "--json"],
            [sys.executable, str(ROOT / "status_report.py"), "--db", str(db)]]


def test_two_downloaders_and_readers_share_one_database(tmp_path) -> None:
    with ImageServer("127.0.0.19") as a, ImageServer("127.0.0.20") as b:
        urls = [(a if i % 2 else b).url(f"/slow/cc{i}.jpg?delay={DELAY}&w={120 + i % 200}")
                for i in range(N)]
        # some gbifIDs with several images: their rollups are written by both processes
        mm = write_multimedia(tmp_path / "m.txt", [row(6_000_000_000 + i // 3, u)
                                                   for i, u in enumerate(urls)])
        db = tmp_path / "d.db"
        assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
        root, locks = tmp_path / "images", tmp_path / "locks"
        # --wait-for-retries: a process that finds every host slot taken by the other waits
        # for one instead of ending at once (what 0 means)
        cmd = download_cmd(db, root, locks, "--threads", "8", "--per-host-concurrency", "3",
                           "--wait-for-retries", "30")
        readers = [Loop(c, cwd=ROOT) for c in reader_commands(db)]
        outs = [(tmp_path / f"p{k}.out", tmp_path / f"p{k}.err") for k in range(2)]
        with ExitStack() as stack:  # the readers loop until both downloaders have ended
            for r in readers:
                stack.enter_context(r)
            procs = []
            for out, err in outs:
                with open(out, "w") as fo, open(err, "w") as fe:
                    procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=fo, stderr=fe))
            codes = [p.wait(timeout=120 * SOAK) for p in procs]
        stats = {s.host: s.stats() for s in (a, b)}

    errs = [e.read_text() for _o, e in outs]
    for code, err in zip(codes, errs, strict=True):
        assert code == 0, err
        assert "locked" not in err.lower() and "Traceback" not in err, err
    runs = q(db, "SELECT outcome, message, counts FROM runs WHERE stage = 'download'")
    assert [(o, m) for o, m, _c in runs] == [("ok", None)] * 2, runs
    counts = [json.loads(c) for _o, _m, c in runs]
    assert all(c.get("success", 0) > N // 10 for c in counts), counts  # both did real work
    assert sum(c.get("success", 0) for c in counts) == N
    assert all(c.get("lost_claim", 0) == 0 for c in counts), counts

    # no double fetch: the server saw each image exactly once
    by_path = {**stats["127.0.0.19"]["by_path"], **stats["127.0.0.20"]["by_path"]}
    assert sorted(by_path.values()) == [1] * N
    # (the per-host limit across processes is tests/test_download_crash.py's subject; the
    # server's in-flight count lags the client by a moment, too coarse at this rate)

    # every image done exactly once, with its file
    rows = q(db, "SELECT status, file_path, sha256, claimed_by FROM images")
    assert {(r[0], r[3]) for r in rows} == {("success", None)}
    files = final_files(root)
    assert len(files) == N == len({r[1] for r in rows})
    assert all(files[fp] == digest for _s, fp, digest, _c in rows)
    assert not temp_files(root)
    assert q(db, "SELECT status, count(*) FROM gbif_ids GROUP BY status") == \
        [("done", (N + 2) // 3)]
    assert integrity(db) == "ok"
    # the counters the report reads agree with the rows, and the files with the rows
    check = subprocess.run([sys.executable, str(ROOT / "status_report.py"), "--db", str(db),
                            "--check", "--install-path", str(root)],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr

    # the readers (ad hoc SQL, the status report) never met a lock either, and really
    # ran during the downloads
    for r in readers:
        assert len(r.runs) >= 3, f"{r.cmd[:3]} hardly ran"
        assert not r.failures(), r.failures()[0].stderr
