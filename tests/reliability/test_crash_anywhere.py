"""Crash anywhere: ingest, download and finalize as real processes, SIGKILLed at seeded
moments, rerun to completion, and compared with a never-killed run.

Each stage gets ``scaled(20)`` landed kills (200 with ``RELIABILITY_SOAK=1``). A never-killed
run is timed first; each kill delay is a seeded uniform fraction of the expected life of
the run it kills (start-up, work, wind-down: the never-killed duration, scaled down for a
rerun that has less left to do), so the kills spread over the whole stage. Within a round,
kills are chained on the same database (each rerun resumes what the killed one left), and
the round ends with a run that completes; the next round starts from a fresh copy. The
delays come from random.Random(seed) in order, and a failure prints the seed and the last
kill points.

The xfail tests at the end of each section reproduce, deterministically, the bugs the
campaigns found (see tests/reliability/README.md).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from download_db.cli.main import init_main
from tests.helpers import build_finished, dump, generate, q, row, write_multimedia
from tests.imageserver import ImageServer
from tests.reliability._support import (
    PY,
    SOAK,
    Campaign,
    copy_db,
    download_cmd,
    execute,
    final_files,
    gbif_dump,
    images_dump,
    init_cmd,
    integrity,
    quiesce,
    run,
    run_and_kill,
    scaled,
    sha,
    temp_files,
)

pytestmark = pytest.mark.timeout(240 * SOAK)
KILLS = scaled(20)


def _integrity_of_copy(db: Path, scratch: Path) -> str:
    """Check a copy, so that the next run meets the files exactly as the kill left them
    (opening the original would roll its hot journal back first)."""
    if not db.exists():
        return "ok"
    c = copy_db(db, scratch / "check.db")
    try:
        return integrity(c)
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{c}{suffix}").unlink(missing_ok=True)


# =========================================================================== ingest

PHASES = {None: 0, "loading": 1, "indexing": 2, "done": 3}


def _ingest_state(db: Path, scratch: Path) -> tuple[str, tuple[int, int]]:
    """(integrity_check, (phase rank, committed input offset)) of a killed build, read
    from a copy, so that the next run meets the files exactly as the kill left them."""
    if not db.exists() or db.stat().st_size == 0:
        return "ok", (0, 0)
    c = copy_db(db, scratch / "progress.db")
    try:
        ok = integrity(c)
        names = {r[0] for r in q(c, "SELECT name FROM sqlite_master")}
        if "meta" not in names:
            return ok, (0, 0)
        meta = dict(q(c, "SELECT key, value FROM meta"))
        return ok, (PHASES[meta.get("ingest_phase")], int(meta.get("ingest_offset") or 0))
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{c}{suffix}").unlink(missing_ok=True)


def _ingest_left(progress: tuple[int, int], size: int) -> float:
    """Share of the build still to do, from (phase rank, offset): the load is most of it."""
    phase, offset = progress
    if phase <= 1:
        return 1 - 0.85 * offset / size
    return 0.1 if phase == 2 else 0.0


def _ingest_result(db: Path) -> dict:
    meta = dict(q(db, "SELECT key, value FROM meta"))
    return {"dump": dump(db), "stats": json.loads(meta["ingest_stats"]),
            "phase": meta["ingest_phase"]}


def test_ingest_killed_anywhere_resumes_to_the_clean_result(tmp_path) -> None:
    mm = generate(tmp_path / "multimedia.txt", 20_000, seed=11)  # ~53k lines, 6 chunks
    # two never-killed builds: the expected result, and (the faster) duration to spread
    # the kills over, so that one slow moment of a loaded machine does not stretch them
    durations = []
    for k in range(2):
        clean_db = tmp_path / f"clean{k}.db"
        clean = run(init_cmd(clean_db, "--multimedia", str(mm), "--chunk-mb", "1"))
        assert clean.returncode == 0, clean.stderr
        durations.append(clean.seconds)
    expected = _ingest_result(clean_db)
    assert _ingest_result(tmp_path / "clean0.db") == expected
    assert expected["stats"]["split_gbif_ids"] > 0  # the merge phase is exercised too

    size = mm.stat().st_size
    camp = Campaign(seed=601, kills=KILLS, duration=min(durations), per_round=5, startup=0.4)
    rnd_no = 0
    while camp.landed < camp.kills:
        camp.check_round(rnd_no)
        db = tmp_path / f"round{rnd_no}.db"
        cmd = init_cmd(db, "--multimedia", str(mm), "--chunk-mb", "1")
        done, last = False, (0, 0)
        for _ in range(min(camp.per_round, camp.kills - camp.landed)):
            r = run_and_kill(cmd, camp.next_delay(_ingest_left(last, size)), scratch=tmp_path)
            if not r.killed:
                assert build_finished(r.returncode, r.stderr, db), \
                    f"{r.stderr}\n{camp.where()}"
                done = True
                break
            camp.landed += 1
            ok, now = _ingest_state(db, tmp_path)
            camp.note(f"round {rnd_no}: killed at {r.delay:.3f}s; phase/offset {now}")
            assert ok == "ok", camp.where()
            # a committed chunk is never lost: progress only moves forward
            assert now >= last, f"progress went back from {last} to {now}\n{camp.where()}"
            last = now
        if not done:
            r = run(cmd)
            assert build_finished(r.returncode, r.stderr, db), f"{r.stderr}\n{camp.where()}"
        assert integrity(db) == "ok", camp.where()
        got = _ingest_result(db)
        assert got["phase"] == "done"
        assert got["stats"] == expected["stats"], camp.where()  # no line counted twice
        assert got["dump"] == expected["dump"], camp.where()
        rnd_no += 1
    print(camp.summary(rnd_no))


def test_a_build_killed_after_its_load_finishes_when_rerun(tmp_path) -> None:
    """Regression: a kill after the ingest committed its last step but before the build was
    marked complete (for a build with --processed-file: anywhere in the legacy import or
    the finalize that follow) made every rerun fail with 'already built; use --reset'."""
    mm = write_multimedia(tmp_path / "m.txt", [row(5_000_000_000 + i, f"https://h.example/{i}")
                                               for i in range(50)])
    processed = tmp_path / "processed_ids.txt"
    processed.write_text("".join(f"{5_000_000_000 + i}\n" for i in range(10)))
    db = tmp_path / "d.db"
    cmd = init_cmd(db, "--multimedia", str(mm), "--processed-file", str(processed),
                   "--install-path", str(tmp_path / "images"))
    assert run(cmd).returncode == 0
    # the state such a kill leaves: loaded and indexed, legacy import not run, not complete
    execute(db, "DELETE FROM meta WHERE key IN ('build_complete', 'legacy_source', 'legacy_lines', "
          "'legacy_stats')")
    r = run(cmd)
    assert r.returncode == 0, r.stderr
    assert "legacy: 10 lines read:" in r.stdout, r.stdout
    assert q(db, "SELECT value FROM meta WHERE key = 'build_complete'") == [("1",)]
    again = run(cmd)
    assert again.returncode == 3 and "database already exists" in again.stderr


# =========================================================================== download

N_SLOW = 150


def _download_urls(a: ImageServer, b: ImageServer) -> list[tuple[int, str]]:
    """(gbifID, URL) rows: mostly real images of varied sizes on two hosts (so claims and
    slots interleave), and a mix of permanent and transient failures. Fewer than 10
    server errors: the circuit breaker (20 outcomes, 50% failures) can never open, so the
    outcome does not depend on where the kills fell."""
    out: list[tuple[int, str]] = []
    gid = 3_000_000_000
    for i in range(N_SLOW):
        srv = a if i % 3 else b
        w = 150 + (i * 37) % 500
        out.append((gid, srv.url(f"/slow/c{i}.jpg?delay=0.02&w={w}&h={w * 4 // 3}")))
        if i % 7 != 0:  # some gbifIDs have 2 images
            gid += 1
    for i in range(14):
        out.append((gid + i, (a if i % 2 else b).url(f"/status/404?n={i}")))
    for i in range(10):
        out.append((gid + 100 + i, a.url(f"/html/p{i}")))
    for i in range(6):
        out.append((gid + 200 + i, b.url(f"/status/500?n={i}")))
    for i in range(6):
        out.append((gid + 300 + i, a.url(f"/corrupt/x{i}.jpg")))
    return out


def _success_paths(db: Path) -> dict[tuple[int, int], tuple[str, str, str, str]]:
    """(gbif_id, image_no) -> (netloc, path of its URL, file_path, sha256) of success rows."""
    out = {}
    for gid, no, urls, fp, digest in q(db, "SELECT gbif_id, image_no, urls, file_path, sha256 "
                                           "FROM images WHERE status = 'success'"):
        u = urlsplit(urls.split("\n")[0])
        out[(gid, no)] = (u.netloc, u.path, fp, digest)
    return out


def _check_files_at_kill(db: Path, root: Path) -> None:
    """What holds at any moment: no final file without its success row, and every
    success row's file exists, as its final file or (committed, not yet renamed) as a
    temp file holding exactly the recorded bytes."""
    rows = {fp: (digest, gid, no) for gid, no, fp, digest in q(
        db, "SELECT gbif_id, image_no, file_path, sha256 FROM images WHERE status = 'success'")}
    finals = final_files(root)
    for rel, digest in finals.items():
        if rel not in rows:
            gid, no = rel.rsplit("/", 1)[1].split(".")[0].split("-")
            raise AssertionError(f"{rel} on disk without a success row: " + repr(q(
                db, "SELECT status, error_type, error_detail, claimed_by FROM images "
                    "WHERE gbif_id = ? AND image_no = ?", (int(gid), int(no)))))
        assert rows[rel][0] == digest, f"{rel} differs from its row"
    for rel, (digest, gid, no) in rows.items():
        if rel in finals:
            continue
        temps = [p for p in temp_files(root) if p.name.startswith(f".{gid}-{no:02d}.")]
        assert any(sha(p.read_bytes()) == digest for p in temps), \
            f"success row {gid}-{no} has neither its file nor a matching temp file"


@pytest.fixture(scope="module")
def two_hosts():
    with ImageServer("127.0.0.11") as a, ImageServer("127.0.0.12") as b:
        yield a, b


def test_download_killed_anywhere_loses_nothing_and_never_refetches(tmp_path,
                                                                    two_hosts) -> None:
    a, b = two_hosts
    servers = {f"{s.host}:{s.port}": s for s in (a, b)}
    mm = write_multimedia(tmp_path / "m.txt", [row(g, u) for g, u in _download_urls(a, b)])
    template = tmp_path / "template.db"
    assert init_main(["--db", str(template), "--multimedia", str(mm), "--no-bar"]) == 0
    extra = ("--threads", "8", "--per-host-concurrency", "4")

    # the never-killed run: the expected result, and the duration the kills spread over
    clean_db = copy_db(template, tmp_path / "clean.db")
    clean_root = tmp_path / "clean-images"
    clean = run(download_cmd(clean_db, clean_root, tmp_path / "locks", *extra))
    assert clean.returncode == 0, clean.stderr
    exp_images, exp_gbif = images_dump(clean_db), gbif_dump(clean_db)
    exp_files = final_files(clean_root)
    statuses = {r[2] for r in exp_images}
    assert statuses == {"success", "failed_permanent", "failed_transient"}, statuses
    assert len(exp_files) == N_SLOW

    camp = Campaign(seed=602, kills=KILLS, duration=clean.seconds, per_round=5, startup=0.15)
    rnd_no = 0
    while camp.landed < camp.kills:
        camp.check_round(rnd_no)
        db = copy_db(template, tmp_path / f"round{rnd_no}.db")
        root = tmp_path / f"images{rnd_no}"
        locks = tmp_path / f"locks{rnd_no}"
        cmd = download_cmd(db, root, locks, *extra)
        for s in servers.values():
            quiesce(s)
            s.reset_stats()
        # (netloc, path) -> index in that server's request log when the image's success
        # row was first seen committed after a kill
        committed: dict[tuple[str, str], int] = {}
        killed_here, done = 0, False
        left = 1.0
        for _ in range(min(camp.per_round, camp.kills - camp.landed)):
            r = run_and_kill(cmd, camp.next_delay(left), scratch=tmp_path)
            if not r.killed:
                assert r.returncode == 0, f"{r.stderr}\n{camp.where()}"
                done = True
                break
            camp.landed += 1
            killed_here += 1
            left = q(db, "SELECT avg(status = 'pending' OR claimed_by IS NOT NULL) "
                         "FROM images")[0][0]
            for s in servers.values():
                quiesce(s)
            n_ok = len(_success_paths(db))
            camp.note(f"round {rnd_no}: killed at {r.delay:.3f}s with {n_ok} successes; "
                      f"said {r.stdout.strip().splitlines()[:1]}; runs "
                      f"{q(db, 'SELECT run_id, pid, outcome FROM runs WHERE run_id > 1')}")
            assert _integrity_of_copy(db, tmp_path) == "ok", camp.where()
            try:
                _check_files_at_kill(db, root)
            except AssertionError as e:
                raise AssertionError(f"{e}\n{camp.where()}") from None
            marks = {k: len(s.stats()["log"]) for k, s in servers.items()}
            for netloc, path, _fp, _d in _success_paths(db).values():
                committed.setdefault((netloc, path), marks[netloc])
        if not done:
            r = run(cmd)
            assert r.returncode == 0, f"{r.stderr}\n{camp.where()}"
        for s in servers.values():
            quiesce(s)

        # the result is the never-killed run's: rows, gbifIDs, files and their bytes
        assert integrity(db) == "ok", camp.where()
        assert images_dump(db) == exp_images, camp.where()
        # gbif_ids are rolled up with every commit (and by the recovery, for the images
        # it adopts), so they match without a finalize
        assert gbif_dump(db) == exp_gbif, camp.where()
        assert final_files(root) == exp_files, camp.where()
        assert not temp_files(root), f"orphan temp files {temp_files(root)}\n{camp.where()}"
        assert q(db, "SELECT count(*) FROM images WHERE claimed_by IS NOT NULL") == [(0,)]
        assert q(db, "SELECT outcome FROM runs WHERE stage = 'download' ORDER BY run_id DESC "
                     "LIMIT 1") == [("ok",)]
        assert not q(db, "SELECT run_id, message FROM runs WHERE outcome = 'failed'")

        # No double fetch. A kill after the server sent an image but before the commit
        # legitimately fetches it again, so the exact property is: an image whose success
        # row was COMMITTED before a kill (seen in the database once the process was dead)
        # is never requested again afterwards; the recovery renames its temp file or keeps
        # its final file. Requests counted in each server's log after that point.
        logs = {k: s.stats()["log"] for k, s in servers.items()}
        refetched = [(netloc, path) for (netloc, path), mark in committed.items()
                     if any(t.split("?", 1)[0] == path for _t, _m, t in logs[netloc][mark:])]
        assert not refetched, f"committed successes fetched again: {refetched[:5]}\n" \
                              f"{camp.where()}"
        # and each image was asked at most once per landed kill beyond the first time
        hits: dict[str, int] = {}
        for netloc, log in logs.items():
            for _t, _m, target in log:
                if target.startswith("/slow/"):
                    key = netloc + target.split("?", 1)[0]
                    hits[key] = hits.get(key, 0) + 1
        assert len(hits) == N_SLOW and max(hits.values()) <= 1 + killed_here
        shutil.rmtree(root)
        rnd_no += 1
    print(camp.summary(rnd_no))


def test_a_download_killed_before_it_claimed_anything_is_marked_crashed(tmp_path,
                                                                        two_hosts) -> None:
    a, _ = two_hosts
    mm = write_multimedia(tmp_path / "m.txt", [row(4_000_000_001, a.url("/img/z.jpg?w=64"))])
    db = tmp_path / "d.db"
    assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    # a downloader whose run row exists but that dies before its first claim: stand in for
    # it with a process that registers a download run and is SIGKILLed
    code = ("import sys, os, signal; from download_db.db import runs; "
            "from download_db.db.connection import connect; c = connect(sys.argv[1]); "
            "runs.start_run(c, 'download'); os.kill(os.getpid(), signal.SIGKILL)")
    r = run([PY, "-c", code, str(db)])
    assert r.returncode == -9
    assert q(db, "SELECT outcome FROM runs WHERE stage = 'download'") == [("running",)]
    ok = run(download_cmd(db, tmp_path / "images", tmp_path / "locks"))
    assert ok.returncode == 0, ok.stderr
    assert q(db, "SELECT outcome FROM runs WHERE stage = 'download' ORDER BY run_id") == \
        [("crashed",), ("ok",)]


def _fake_dead_run(db: Path, root: Path, gid: int, no: int, jpeg: bytes) -> None:
    """The state a downloader SIGKILLed after writing an image's temp file but before
    committing its result leaves: a 'running' run whose process is gone, the image claimed
    by it, and a complete temp file next to the final name."""
    import socket

    dead = run([PY, "-c", "import os; print(os.getpid())"])
    pid = int(dead.stdout)
    host = socket.gethostname()
    (run_id,) = q(db, "SELECT coalesce(max(run_id), 0) + 1 FROM runs")[0]
    execute(db, "INSERT INTO runs(run_id, stage, started_at, heartbeat_at, hostname, pid, argv, "
                "outcome) VALUES (?, 'download', strftime('%s','now'), strftime('%s','now'), ?, ?, "
                "'[]', 'running')", (run_id, host, pid))
    execute(db, "UPDATE images SET claimed_by = ?, next_attempt_at = strftime('%s','now') + 600 "
                "WHERE gbif_id = ? AND image_no = ?", (f"{host}:{pid}:{run_id}", gid, no))
    d = root / str(gid)[:3] / str(gid)[3:6]
    d.mkdir(parents=True, exist_ok=True)
    (d / f".{gid}-{no:02d}.{pid}-1.part").write_bytes(jpeg)


def test_a_download_adopted_after_a_crash_rolls_its_gbif_id_up(tmp_path, two_hosts) -> None:
    import io

    from PIL import Image

    a, _ = two_hosts
    gid = 4_100_000_001
    mm = write_multimedia(tmp_path / "m.txt", [row(gid, a.url("/img/adopt-me.jpg?w=64"))])
    db = tmp_path / "d.db"
    assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    buf = io.BytesIO()
    Image.new("RGB", (300, 400), (90, 120, 60)).save(buf, "JPEG")
    _fake_dead_run(db, tmp_path / "images", gid, 0, buf.getvalue())
    r = run(download_cmd(db, tmp_path / "images", tmp_path / "locks"))
    assert r.returncode == 0, r.stderr
    assert "1 downloads adopted" in r.stdout, r.stdout
    assert q(db, "SELECT status, error_detail FROM images") == \
        [("success", "adopted after a crash")]
    assert q(db, "SELECT status, n_success FROM gbif_ids") == [("done", 1)]


class _Killed(BaseException):
    pass


class _DiesBeforeCommit:
    """transaction() of a process killed just before its COMMIT: nothing is committed."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.execute("ROLLBACK")
        raise _Killed


def test_a_recovery_killed_before_its_commit_leaves_no_final_file_without_its_row(
        tmp_path, two_hosts, monkeypatch) -> None:
    """Regression (the download campaign found it; fixed in c92b3b6): recover() renamed an
    adopted temp file to its final name before its transaction committed, so a kill in
    between left a final file whose row was still pending."""
    import io

    from PIL import Image

    from download_db.db.connection import connect
    from download_db.download import recovery

    a, _ = two_hosts
    gid = 4_200_000_001
    mm = write_multimedia(tmp_path / "m.txt", [row(gid, a.url("/img/rename-me.jpg?w=64"))])
    db = tmp_path / "d.db"
    assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    buf = io.BytesIO()
    Image.new("RGB", (300, 400), (90, 120, 60)).save(buf, "JPEG")
    root = tmp_path / "images"
    _fake_dead_run(db, root, gid, 0, buf.getvalue())
    monkeypatch.setattr(recovery, "transaction", _DiesBeforeCommit)
    conn = connect(db)
    with pytest.raises(_Killed):
        recovery.recover(conn, root.resolve(), 10.0)
    conn.close()
    finals = final_files(root)
    success = {r[0] for r in q(db, "SELECT file_path FROM images WHERE status = 'success'")}
    assert set(finals) <= success, f"final files without a success row: {set(finals) - success}"


# =========================================================================== finalize

# init_download_db.py --finalize-only with its real CLI, lock and runs row, but chunks of
# 250 gbifIDs instead of 200,000, so that a kill lands between many commits.
FINALIZE_CHUNK = 250
_FINALIZE_DRIVER = """
import sys
import download_db.db.gbif_ids as f
f.finalize.__kwdefaults__["chunk_ids"] = int(sys.argv[2])
from download_db.cli.main import init_main
sys.exit(init_main(["--db", sys.argv[1], "--finalize-only", "--no-bar",
                    "--progress-every", "1000"]))
"""


def _mark_statuses(db: Path, seed: int) -> None:
    """A seeded mix of image outcomes, as downloads would leave them."""
    import random
    import sqlite3

    rnd = random.Random(seed)
    c = sqlite3.connect(db)
    ids = [r[0] for r in c.execute("SELECT image_id FROM images")]
    upd = []
    for i in ids:
        u = rnd.random()
        if u < 0.45:
            upd.append(("success", 1, i))
        elif u < 0.55:
            upd.append(("failed_permanent", 1, i))
        elif u < 0.75:
            upd.append(("failed_transient", rnd.randint(1, 5), i))
        # else: pending
    c.executemany("UPDATE images SET status = ?, attempts = ? WHERE image_id = ?", upd)
    c.commit()
    c.close()


def test_finalize_killed_anywhere_gives_the_clean_rollup(tmp_path) -> None:
    mm = generate(tmp_path / "multimedia.txt", 30_000, seed=13)
    template = tmp_path / "template.db"
    assert init_main(["--db", str(template), "--multimedia", str(mm), "--no-bar"]) == 0
    _mark_statuses(template, seed=13)
    before = {r[0]: r for r in gbif_dump(template)}
    images_before = images_dump(template)

    def cmd(db: Path) -> list[str]:
        return [PY, "-c", _FINALIZE_DRIVER, str(db), str(FINALIZE_CHUNK)]

    durations = []
    for k in range(2):  # the faster of two never-killed runs sets the kill spread
        clean_db = copy_db(template, tmp_path / f"clean{k}.db")
        clean = run(cmd(clean_db))
        assert clean.returncode == 0, clean.stderr
        durations.append(clean.seconds)
    expected = gbif_dump(clean_db)
    after = {r[0]: r for r in expected}
    n_changed = sum(before[g] != after[g] for g in after)
    assert n_changed > len(after) // 2  # most gbifIDs change: kills land mid-rollup

    # lo: skip the first quarter of the life (importing the package), which cannot touch
    # the database; the kills land in the opening, the chunks and the close
    camp = Campaign(seed=603, kills=KILLS, duration=min(durations), per_round=5, lo=0.25,
                    startup=0.45)
    rnd_no = 0
    while camp.landed < camp.kills:
        camp.check_round(rnd_no)
        db = copy_db(template, tmp_path / f"round{rnd_no}.db")
        done, left = False, 1.0
        for _ in range(min(camp.per_round, camp.kills - camp.landed)):
            r = run_and_kill(cmd(db), camp.next_delay(left), scratch=tmp_path)
            if not r.killed:
                assert r.returncode == 0, f"{r.stderr}\n{camp.where()}"
                done = True
                break
            camp.landed += 1
            assert _integrity_of_copy(db, tmp_path) == "ok", camp.where()
            # every gbifID is as it was or as it will be: a chunk commits whole, or not
            now = gbif_dump(db)
            mixed = [r for r in now if r not in (before[r[0]], after[r[0]])]
            moved = sum(r == after[r[0]] and r != before[r[0]] for r in now)
            camp.note(f"round {rnd_no}: killed at {r.delay:.3f}s, {moved} of {n_changed} "
                      "changes committed")
            assert not mixed, f"{mixed[:3]}\n{camp.where()}"
            left = 1 - moved / n_changed  # a rerun scans every chunk, writes only changes
        if not done:
            r = run(cmd(db))
            assert r.returncode == 0, f"{r.stderr}\n{camp.where()}"
        assert integrity(db) == "ok", camp.where()
        assert gbif_dump(db) == expected, camp.where()
        assert images_dump(db) == images_before  # finalize never touches images
        assert q(db, "SELECT outcome FROM runs WHERE stage = 'finalize' "
                     "ORDER BY run_id DESC LIMIT 1") == [("ok",)]
        rnd_no += 1
    print(camp.summary(rnd_no))
