"""One fetch per shared URL across processes: url_group at ingest, claims that take a
URL's group-mates, array plans that keep a shared URL in one task, the migration."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import sqlite3 as stdlib_sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from download_db.arrays import plan
from download_db.cli.main import init_main
from download_db.db import array_plans, claims, url_groups
from download_db.db.connection import connect, transaction
from download_db.db.schema import POST_LOAD_INDEXES, create_schema
from download_db.download import shared
from download_db.ingest import url_groups as compute_groups
from tests.helpers import generate, q, row, write_multimedia
from tests.imageserver import ImageServer

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parent.parent
NOW = 1_700_000_000.0


def _build(tmp_path: Path, rows: list[list[str]], name: str = "d.db") -> Path:
    mm = write_multimedia(tmp_path / f"{name}.txt", rows)
    db = tmp_path / name
    assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    return db


def _groups(db: Path) -> dict[int, int | None]:
    """gbif_id -> url_group, for gbifIDs with one image."""
    return dict(q(db, "SELECT gbif_id, url_group FROM images"))


def _image_id(db: Path, gbif_id: int) -> int:
    return q(db, "SELECT image_id FROM images WHERE gbif_id = ?", (gbif_id,))[0][0]


# -- computing the groups ------------------------------------------------------------------


def test_ingest_groups_rows_by_their_normalised_first_url(tmp_path) -> None:
    db = _build(tmp_path, [
        row(1, "https://A.Example.org:443/x.jpg"),  # the same URL once normalised
        row(2, "https://a.example.org/x.jpg"),
        row(3, "https://a.example.org/y.jpg"),  # its own
        row(4, "https://a.example.org/x.jpg#frag"),
        row(5, "https://b.example.org/x.jpg"),  # another host, another URL
    ])
    g = _groups(db)
    first = _image_id(db, 1)
    assert g == {1: first, 2: first, 3: None, 4: first, 5: None}
    assert q(db, "SELECT value FROM meta WHERE key = 'url_groups'") == [("done",)]


def test_the_ingest_spill_and_a_pass_over_the_database_agree(tmp_path) -> None:
    mm = generate(tmp_path / "g.txt", 400, seed=3, hosts=3)
    header, *lines = mm.read_text(encoding="utf-8").splitlines()
    lines.sort(key=lambda line: line.split("\t")[0])  # each gbifID's rows together
    # URLs of the file again under new gbifIDs
    lines += ["\t".join([str(9_000_000 + k), *line.split("\t")[1:]])
              for k, line in enumerate(lines[1:120:3])]
    mm.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    db = tmp_path / "g.db"
    # an uninterrupted load hashes the URLs as it goes: no pass over the database
    with mock.patch.object(url_groups, "primary_urls", side_effect=AssertionError):
        assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    loaded = dict(q(db, "SELECT image_id, url_group FROM images"))
    assert sum(v is not None for v in loaded.values()) >= 20
    conn = connect(db)
    try:
        urls = dict(conn.execute(f"SELECT image_id, {url_groups.PRIMARY_URL} FROM images"))
        with transaction(conn):
            conn.execute("UPDATE images SET url_group = NULL")
            conn.execute("DELETE FROM meta WHERE key = 'url_groups'")
        compute_groups.compute(conn)
        assert dict(conn.execute("SELECT image_id, url_group FROM images")) == loaded
    finally:
        conn.close()
    assert loaded == _expected([urls[i] for i in sorted(urls)], sorted(urls))
    assert not list(tmp_path.glob("*.url_groups-*"))


def _fresh(path: Path, urls: list[str]) -> stdlib_sqlite3.Connection:
    conn = connect(path)
    create_schema(conn)
    with transaction(conn):
        conn.executemany("INSERT INTO images(gbif_id, image_no, host_id, image_key, urls) "
                         "VALUES (?, 0, 1, ?, ?)",
                         [(100 + i, u, u) for i, u in enumerate(urls)])
    for ddl in POST_LOAD_INDEXES:
        conn.execute(ddl)
    return conn


def _expected(urls: list[str], ids: list[int] | None = None) -> dict[int, int | None]:
    """image_id (1-based input order, or ``ids``) -> the smallest image_id with the same
    first URL, None for a URL of one image."""
    ids = ids or list(range(1, len(urls) + 1))
    first = [u.split("\n")[0] for u in urls]
    return {i: (min(j for j, v in zip(ids, first, strict=True) if v == u)
                if first.count(u) > 1 else None) for i, u in zip(ids, first, strict=True)}


def test_a_hash_collision_never_links_two_urls(tmp_path) -> None:
    urls = ["https://h/a.jpg", "https://h/b.jpg", "https://h/a.jpg\nhttps://h/z.jpg",
            "https://h/c.jpg", "https://h/b.jpg", "https://h/d.jpg"]
    conn = _fresh(tmp_path / "c.db", urls)
    # every URL hashes alike: all rows are candidates, only equal strings are grouped
    with mock.patch.object(compute_groups, "url_hashes",
                           lambda a: np.zeros(len(a), np.uint64)):
        assert compute_groups.compute(conn) == (2, 4)
    got = dict(conn.execute("SELECT image_id, url_group FROM images"))
    assert got == _expected(urls) == {1: 1, 2: 2, 3: 1, 4: None, 5: 2, 6: None}
    assert not list(tmp_path.glob("*.url_groups-*"))  # the spill files are gone
    conn.close()


_URL = st.sampled_from([f"https://h.example.org/{c}.jpg" for c in "abcdefg"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(_URL, min_size=1, max_size=3).map("\n".join), max_size=40),
       st.sampled_from(["real", "coarse", "one"]), st.integers(1, 7))
def test_url_group_is_the_smallest_image_id_of_equal_first_urls(urls, hashing, chunk) -> None:
    coarse = {"real": compute_groups.url_hashes,
              # few distinct hashes (many collisions) spread over the spill files
              "coarse": lambda a: np.array([(len(u) % 3) << 62 for u in a], np.uint64),
              "one": lambda a: np.full(len(a), 7, np.uint64)}[hashing]
    with tempfile.TemporaryDirectory() as d:
        conn = _fresh(Path(d) / "p.db", urls)
        with mock.patch.object(compute_groups, "url_hashes", coarse), \
                mock.patch.object(compute_groups, "CHUNK", chunk):
            compute_groups.compute(conn)
        got = dict(conn.execute("SELECT image_id, url_group FROM images"))
        conn.close()
    assert got == _expected(urls)


def test_compute_runs_once_and_a_rerun_after_a_kill_finishes(tmp_path) -> None:
    urls = ["https://h/a.jpg"] * 3 + ["https://h/b.jpg"] * 2 + ["https://h/c.jpg"]
    conn = _fresh(tmp_path / "k.db", urls)
    calls = []

    def stop_after_first(*a, **k):  # killed after the first file's groups were written
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_save(*a, **k)

    real_save = url_groups.save
    with mock.patch.object(url_groups, "save", stop_after_first), \
            pytest.raises(KeyboardInterrupt):
        compute_groups.compute(conn)
    assert not url_groups.done(conn)
    assert compute_groups.compute(conn) == (2, 5)
    assert dict(conn.execute("SELECT image_id, url_group FROM images")) == _expected(urls)
    with mock.patch.object(url_groups, "primary_urls", side_effect=AssertionError):
        assert compute_groups.compute(conn) == (2, 5)  # done: no second pass
    conn.close()


def test_an_old_database_gets_its_groups_at_the_next_merge(tmp_path) -> None:
    db = _build(tmp_path, [row(1, "https://a.example.org/x.jpg"),
                           row(2, "https://a.example.org/x.jpg"),
                           row(3, "https://a.example.org/y.jpg")])
    c = stdlib_sqlite3.connect(db)  # as the program before url_group left it: v14
    c.executescript("""
        DROP INDEX images_url_group;
        DROP VIEW images_v;
        ALTER TABLE images DROP COLUMN url_group;
        ALTER TABLE array_plan DROP COLUMN split_by;
        DELETE FROM meta WHERE key = 'url_groups';
        UPDATE meta SET value = '14' WHERE key = 'schema_version';""")
    c.close()
    assert init_main(["--db", str(db), "--merge-only", "--no-bar"]) == 0
    first = _image_id(db, 1)
    assert _groups(db) == {1: first, 2: first, 3: None}
    assert q(db, "SELECT value FROM meta WHERE key = 'url_groups'") == [("done",)]
    assert q(db, "SELECT count(*) FROM sqlite_master WHERE name = 'images_url_group'") == [(1,)]
    assert "split_by" in {r[1] for r in q(db, "PRAGMA table_info(array_plan)")}


# -- claims --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("url_group_claims")
    rows = [row(10 + j, "https://a.example.org/shared.jpg") for j in range(3)]
    rows += [row(20 + j, "https://a.example.org/pair.jpg") for j in range(2)]
    rows += [row(30 + j, f"https://a.example.org/own{j}.jpg") for j in range(4)]
    return _build(d, rows, "template.db")


@pytest.fixture
def conn(template, tmp_path):
    db = tmp_path / "c.db"
    shutil.copy(template, db)
    c = connect(db)
    yield c
    c.close()


def _claim(conn, token: str, n: int, now: float = NOW) -> list[claims.Item]:
    with transaction(conn):
        return claims.claim(conn, token, 1, n, lease=60.0, now=now)


def _gid(conn, items) -> list[int]:
    ids = {it.image_id for it in items}
    return sorted(g for i, g in conn.execute("SELECT image_id, gbif_id FROM images") if i in ids)


def test_a_claim_takes_the_rows_sharing_its_urls(conn) -> None:
    first = _claim(conn, "p1", 1)  # the first row due is gbifID 10's
    assert _gid(conn, first) == [10, 11, 12]
    assert all(it.host_id == 1 for it in first)
    second = _claim(conn, "p2", 4)  # never a row the first holds
    assert not {it.image_id for it in first} & {it.image_id for it in second}
    got = _gid(conn, second)
    assert {20, 21} <= set(got) or not {20, 21} & set(got)  # a pair goes whole


def test_mates_of_a_dead_claim_come_back_and_undue_mates_stay(conn) -> None:
    with transaction(conn):  # only the three images of shared.jpg left to do
        conn.execute("UPDATE images SET status = 'success' WHERE gbif_id >= 20")
    first = _claim(conn, "dead", 1)
    assert _gid(conn, first) == [10, 11, 12]
    # the lease ran out: an ordinary claim takes them back, marked as taken over
    again = _claim(conn, "p2", 1, now=NOW + 120)
    assert _gid(conn, again) == [10, 11, 12] and all(it.taken_over for it in again)
    with transaction(conn):
        claims.release(conn, [(it, NOW + 120) for it in again], "p2", now=NOW + 120)
        # gbifID 12 failed before and waits for its retry: not taken before it is due
        conn.execute("UPDATE images SET status = 'failed_transient', next_attempt_at = ? "
                     "WHERE gbif_id = 12", (NOW + 10_000,))
    assert _gid(conn, _claim(conn, "p3", 1, now=NOW + 130)) == [10, 11]
    with transaction(conn):
        conn.execute("UPDATE images SET status = 'success', claimed_by = NULL "
                     "WHERE gbif_id IN (10, 11)")
    # its mates done, it is an ordinary row, claimed (and fetched) when due
    assert _claim(conn, "p4", 9, now=NOW + 5_000) == []
    assert _gid(conn, _claim(conn, "p4", 9, now=NOW + 20_000)) == [12]


def test_a_claim_brings_a_saved_mate_s_file(conn) -> None:
    with transaction(conn):
        conn.execute("UPDATE images SET status = 'success', file_path = '000/000/10-00.jpg', "
                     "file_size = 5, sha256 = 'ab', width = 3, height = 4 WHERE gbif_id = 10")
        conn.execute("UPDATE images SET status = 'success', file_path = '000/000/20-00.jpg', "
                     "file_size = 5, sha256 = 'cd', claimed_by = 'x' WHERE gbif_id = 20")
    got = _claim(conn, "p", 9)
    by_gid = {g: it for it in got for i, g in conn.execute(
        "SELECT image_id, gbif_id FROM images") if i == it.image_id}
    ten = _image_id_of(conn, 10)
    assert by_gid[11].saved == (ten, "000/000/10-00.jpg", 5, "ab", 3, 4, None, None, None, None,
                                  None)
    assert by_gid[12].saved == by_gid[11].saved
    assert by_gid[21].saved is None  # its mate's file is not in place yet (still claimed)
    assert by_gid[30].saved is None


def _image_id_of(conn, gbif_id: int) -> int:
    return conn.execute("SELECT image_id FROM images WHERE gbif_id = ?", (gbif_id,)).fetchone()[0]


def test_the_mates_claims_use_the_url_group_index(conn) -> None:
    args = {"token": "t", "lease_until": 1.0, "host_id": 1, "now": 0.0, "groups": "[1]",
            "mates": 10}
    for sql in (claims._CLAIM_MATES, claims._SAVED_MATES):
        steps = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]
        assert any("images_url_group" in s for s in steps), steps
        assert not any(s.startswith("SCAN images") for s in steps), steps


# -- array plans ---------------------------------------------------------------------------


def test_plans_keep_the_rule_they_were_made_with(tmp_path) -> None:
    old = stdlib_sqlite3.connect(tmp_path / "old.db")  # a task DB from before split_by
    old.execute(array_plans.DDL.replace(
        "    split_by   TEXT    NOT NULL DEFAULT 'image_id',\n", ""))
    old.execute("INSERT INTO array_plan VALUES (2, 1, 0, 2, 1, 5, 'x', 0)")
    old.commit()
    assert array_plans.load(old, 2) == ("x", [(1, 0, 2, 1, 5)], array_plans.BY_IMAGE)
    old.close()
    db = _build(tmp_path, [row(i, f"https://a.example.org/{i % 3}.jpg") for i in range(9)])
    conn = connect(db)
    try:
        conn.execute("ATTACH DATABASE ? AS t", (str(tmp_path / "old.db"),))
        with transaction(conn):
            assert array_plans.carry(conn, "t") == 1
        assert array_plans.load(conn, 2)[2] == array_plans.BY_IMAGE
        _, _, by = plan.fixed_plan(conn, tmp_path / "none", 3, 2, 4, "e")
        assert by == array_plans.BY_URL_GROUP  # a new plan, groups known
        with transaction(conn):
            conn.execute("DELETE FROM meta WHERE key = 'url_groups'")
        _, _, by = plan.fixed_plan(conn, tmp_path / "none", 3, 2, 4, "e")
        assert by == array_plans.BY_IMAGE  # groups not computed yet: by image_id
    finally:
        conn.close()


# -- real downloads ------------------------------------------------------------------------


def _download(tmp_path: Path, db: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "image_install_db.py"), "--db", str(db),
            "--install-path", str(tmp_path / "images"), "--no-bar", "--per-host-rate", "0",
            "--timeout", "2,2", "--deadline", "5", "--lease", "30", "--wait-for-retries", "0",
            "--lock-dir", str(tmp_path / f"locks{len(extra)}"), *extra]


def _all_saved_alone(tmp_path: Path, db: Path, n: int) -> None:
    """Every image a success with its own <gbifID>-NN file; mates have the same bytes."""
    got = q(db, "SELECT gbif_id, status, file_path, sha256, url_group FROM images")
    assert len(got) == n and {r[1] for r in got} == {"success"}
    for gid, _, path, _, _ in got:
        assert re.search(rf"/{gid}-00\.jpg$", path), path
        assert (tmp_path / "images" / path).is_file()
    by_group: dict[int, set[str]] = {}
    for _, _, _, sha, g in got:
        if g is not None:
            by_group.setdefault(g, set()).add(sha)
    assert by_group and all(len(s) == 1 for s in by_group.values())


def test_two_processes_fetch_each_shared_url_once(tmp_path) -> None:
    n_urls = 24
    with ImageServer("127.0.0.9") as server:
        rows, gid = [], 3_000_000_000
        for i in range(n_urls):  # each URL under 2 or 3 gbifIDs, spread over the file
            for _ in range(2 + i % 2):
                rows.append((gid, server.url(f"/slow/u{i}.jpg?delay=0.1&w=64&h=64")))
                gid += 1
        order = sorted(range(len(rows)), key=lambda k: (k * 7) % len(rows))
        db = _build(tmp_path, [row(rows[k][0], rows[k][1]) for k in order])
        procs = [subprocess.Popen(_download(tmp_path, db, "--threads", "6",
                                            "--per-host-concurrency", "3"),
                                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  env={**os.environ, "SLACK_WEBHOOK_URL": ""})
                 for _ in range(2)]
        for p in procs:
            assert p.wait(timeout=180) == 0, p.stderr.read() if p.stderr else ""
        stats = server.stats()
    assert [stats["by_path"].get(f"/slow/u{i}.jpg") for i in range(n_urls)] == [1] * n_urls
    assert q(db, "SELECT count(*) FROM images WHERE claimed_by IS NOT NULL") == [(0,)]
    _all_saved_alone(tmp_path, db, len(rows))


def test_images_whose_mate_was_saved_by_an_earlier_run_link_its_file(tmp_path) -> None:
    with ImageServer("127.0.0.13") as server:
        rows = [row(3_100_000_000 + 3 * i + j, server.url(f"/img/e{i}.jpg?w=64&h=64"))
                for i in range(4) for j in range(3)]
        db = _build(tmp_path, rows)
        env = {**os.environ, "SLACK_WEBHOOK_URL": ""}
        for extra in (("--max-images", "1"), ()):  # a run saves one image; the next the rest
            r = subprocess.run(_download(tmp_path, db, "--threads", "2", *extra), cwd=ROOT,
                               capture_output=True, text=True, timeout=180, env=env)
            assert r.returncode == 0, r.stderr
            if extra:
                assert q(db, "SELECT count(*) FROM images WHERE status = 'success'") == [(1,)]
        by_path = server.stats()["by_path"]
    assert [by_path.get(f"/img/e{i}.jpg") for i in range(4)] == [1] * 4
    _all_saved_alone(tmp_path, db, len(rows))
    assert q(db, "SELECT count(*) FROM images WHERE error_detail LIKE 'one fetch for a "
                 "shared URL%'") == [(8,)]


def test_a_manifest_is_never_linked_from_the_database(tmp_path) -> None:
    row_ = (7, "000/000/7-00.jpg", 5, "ab", 3, 4, None, None, None, None, None)
    got = shared.saved_in_db(tmp_path, row_, "https://h.example.org/a.jpg")
    assert got is not None and got.final == tmp_path / "000/000/7-00.jpg" and got.ext == "jpg"
    # its other canvases, which every image of the URL gets rows for, are the fetch's
    assert shared.saved_in_db(tmp_path, row_, "https://h.example.org/iiif/m1/manifest") is None


def _task(tmp_path: Path, db: Path, shard: str) -> subprocess.Popen:
    cmd = _download(tmp_path, db, "--threads", "4", "--per-host-concurrency", "3",
                    "--shard", shard)
    cmd[cmd.index("--lock-dir") + 1] = str(tmp_path / f"locks-{shard.replace('/', '-')}")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SLACK_WEBHOOK_URL": ""}, cwd=tmp_path)


def test_an_array_fetches_each_shared_url_once_across_a_split_host(tmp_path) -> None:
    n_urls = 20
    with ImageServer("127.0.0.10") as big, ImageServer("127.0.0.11") as small:
        # 60 images of 20 URLs: image_id % 3 would put each URL's three images in
        # three different tasks
        rows = [row(5000 + i, big.url(f"/slow/b{i % n_urls}.jpg?delay=0.1&w=64&h=64"))
                for i in range(3 * n_urls)]
        rows += [row(9000 + i, small.url(f"/img/s{i}.jpg?w=64&h=48")) for i in range(6)]
        db = _build(tmp_path, rows)
        procs = [_task(tmp_path, db, f"{k}/3") for k in (1, 2, 3)]
        for p in procs:
            _, err = p.communicate(timeout=180)
            assert p.returncode == 0, err
        by_path = big.stats()["by_path"]
    split = [t for t in plan.task_dbs(plan.tasks_dir_for(db))
             if q(t, "SELECT value FROM meta WHERE key = 'task_split'")[0][0]]
    assert len(split) == 3  # the big host was split over all three tasks
    assert q(split[0], "SELECT DISTINCT split_by FROM array_plan") == [("url_group",)]
    assert [by_path.get(f"/slow/b{i}.jpg") for i in range(n_urls)] == [1] * n_urls
    assert init_main(["--db", str(db), "--finalize-only", "--no-bar"]) == 0
    _all_saved_alone(tmp_path, db, 3 * n_urls + 6)


def test_a_kill_while_holding_shared_urls_loses_nothing(tmp_path) -> None:
    n_urls, threads = 30, 6
    with ImageServer("127.0.0.12") as server:
        rows = [row(4_000_000_000 + 3 * i + j,
                    server.url(f"/slow/k{i}.jpg?delay=0.2&w=64&h=64"))
                for j in range(3) for i in range(n_urls)]  # a URL's images far apart
        db = _build(tmp_path, rows)
        runs = "SELECT count(*) FROM runs WHERE stage = 'download'"
        p = subprocess.Popen(_download(tmp_path, db, "--threads", str(threads),
                                       "--per-host-concurrency", str(threads)),
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env={**os.environ, "SLACK_WEBHOOK_URL": ""})
        until = time.monotonic() + 60
        while p.poll() is None and q(db, runs) == [(0,)] and time.monotonic() < until:
            time.sleep(0.01)
        time.sleep(0.8)  # some saved, some in flight, most claimed or queued
        assert p.poll() is None, "the run ended before the kill: nothing to check"
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert q(db, "SELECT count(*) FROM images WHERE claimed_by IS NOT NULL")[0][0] > 0
        final = subprocess.run(_download(tmp_path, db, "--threads", str(threads),
                                         "--per-host-concurrency", str(threads)),
                               cwd=ROOT, capture_output=True, text=True, timeout=180,
                               env={**os.environ, "SLACK_WEBHOOK_URL": ""})
        assert final.returncode == 0, final.stderr
        fetched = [server.stats()["by_path"].get(f"/slow/k{i}.jpg", 0) for i in range(n_urls)]
    _all_saved_alone(tmp_path, db, len(rows))
    for path, sha in q(db, "SELECT file_path, sha256 FROM images"):
        assert hashlib.sha256((tmp_path / "images" / path).read_bytes()).hexdigest() == sha
    assert q(db, "SELECT count(*) FROM images WHERE claimed_by IS NOT NULL") == [(0,)]
    assert not list((tmp_path / "images").rglob("*.part"))
    # each URL fetched; again only when the kill cut its fetch off (one per thread, 6
    # here) or lost its result before the commit: a URL with a saved image is not
    # fetched again for its mates (they link the saved file)
    assert min(fetched) >= 1 and sum(f - 1 for f in fetched) <= 2 * threads
