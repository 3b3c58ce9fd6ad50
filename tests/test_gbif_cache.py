"""Rescue from GBIF's image cache: the URL scheme, one connection, rescued, missing, crash-safe."""

from __future__ import annotations

import html
import json
import signal
import sqlite3 as stdlib_sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from download_db.cli.main import main
from download_db.db import claims
from download_db.db.claims import Item, Result
from download_db.db.connection import connect, transaction
from download_db.db.schema import SCHEMA_VERSION, apply_migration
from download_db.download.scheduler import Scheduler
from download_db.download.stage import run_download
from download_db.errors import UsageError
from download_db.states import (
    DEFAULT_MAX_ATTEMPTS,
    FAILED_PERMANENT,
    FAILED_TRANSIENT,
    PENDING,
    SUCCESS,
    rescuable,
)
from download_db.web import gbif_cache, policy
from download_db.web.politeness import HostGate, Politeness
from tests.helpers import config, make_db, q
from tests.imageserver import ImageServer

ROOT = Path(__file__).resolve().parent.parent
FIRST = 7_100_000_001  # gbifID of the first image of make_db


# -- the URL scheme (pure) ------------------------------------------------------------

def test_cache_url_matches_gbifs_worked_example() -> None:
    # techdocs.gbif.org/en/openapi/images
    ident = "https://inaturalist-open-data.s3.amazonaws.com/photos/31610070/original.jpg"
    assert gbif_cache.cache_url(2005380410, ident) == (
        "https://api.gbif.org/v1/image/cache/occurrence/2005380410/media/"
        "568639b65b65ddb9090d3d6ef1abce14")
    assert gbif_cache.host_of(gbif_cache.DEFAULT_BASE) == gbif_cache.HOST


@given(st.integers(1, 10**18), st.text(min_size=1, max_size=200),
       st.sampled_from(["http://127.0.0.9:8080/v1/image/cache", "https://x.org/c/"]))
def test_cache_url_is_base_occurrence_media_md5(gid: int, ident: str, base: str) -> None:
    url = gbif_cache.cache_url(gid, ident, base)
    head, key = url.rsplit("/", 1)
    assert head == f"{base.rstrip('/')}/occurrence/{gid}/media"
    assert len(key) == 32 and all(c in "0123456789abcdef" for c in key)
    assert gbif_cache.cache_url(gid, ident, base + "/") == url  # a trailing slash is no matter


@pytest.mark.parametrize("base", ["ftp://x.org/c", "api.gbif.org/v1", "https:///c",
                                  "https://x.org/c?size=200", "http://x.org:99999/c"])
def test_a_bad_base_url_is_refused_in_one_line(tmp_path: Path, base: str) -> None:
    with pytest.raises(UsageError, match="--gbif-cache-url"):
        replace(config(tmp_path, tmp_path / "d.db"), gbif_cache_url=base).validate()


def test_a_bad_base_url_on_the_command_line_is_one_line_and_exit_64(tmp_path: Path,
                                                                   capsys) -> None:
    db = make_db(tmp_path, ["http://a.example.org/x.jpg"], first=FIRST)
    assert main(["download", "--db", str(db), "--rescue-from-gbif-cache",
                 "--gbif-cache-url", "ftp://x.org/c", "--contact", "t@example.org"]) == 64
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("--gbif-cache-url ftp://x.org/c: not an http(s) URL with a host")
    assert "Traceback" not in "".join(err)


def test_gbifs_cache_gets_one_connection_wherever_it_is() -> None:
    shipped = policy.load(None, policy.HostLimits())
    assert shipped.limits("api.gbif.org").max_at_once == 1
    moved = policy.load(None, policy.HostLimits(), {"127.0.0.9": gbif_cache.HOST})
    assert moved.limits("127.0.0.9").max_at_once == 1
    assert moved.limits("127.0.0.10").max_at_once == policy.HostLimits().max_at_once


def test_a_users_policy_for_the_cache_address_wins(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text('[hosts."127.0.0.9"]\nmax_at_once = 2\n')
    got = policy.load(f, policy.HostLimits(), {"127.0.0.9": gbif_cache.HOST})
    assert got.limits("127.0.0.9").max_at_once == 2


def test_what_the_cache_may_cure() -> None:
    assert rescuable(FAILED_PERMANENT, "http_404") and rescuable(FAILED_PERMANENT, "http_410")
    assert rescuable(FAILED_PERMANENT, "invalid_content_type")
    for ours in ("too_large", "raw_unusable", "placeholder", "placeholder_image", "no_url",
                 "manifest_error", None):
        assert not rescuable(FAILED_PERMANENT, ours)
    assert not rescuable(FAILED_TRANSIENT, "timeout") and not rescuable(PENDING, None)


def _item(tries: int = 0) -> Item:
    return Item(1, FIRST, 0, FAILED_PERMANENT, 2, "http_404", ["http://a.org/x.jpg"],
                claims.RESCUE_QUEUE, rescue=True, cache_tries=tries)


def test_the_caches_outcomes_as_recorded() -> None:
    now = 1000.0
    sql, p = claims.rescue_params(Result(_item(), FAILED_PERMANENT, error_type="http_404"),
                                  "t", DEFAULT_MAX_ATTEMPTS, now)
    assert (p["fgc"], p["next"]) == (0, 0.0)  # not there: never asked again
    _, p = claims.rescue_params(Result(_item(), FAILED_TRANSIENT, error_type="timeout"),
                                "t", DEFAULT_MAX_ATTEMPTS, now)
    assert p["fgc"] == -1 and p["next"] > now  # one failed try, due after a backoff
    _, p = claims.rescue_params(Result(_item(DEFAULT_MAX_ATTEMPTS - 1), FAILED_TRANSIENT,
                                       error_type="timeout"), "t", DEFAULT_MAX_ATTEMPTS, now)
    assert p["fgc"] == 0  # the budget is spent: given up, like a 404
    _, p = claims.rescue_params(Result(_item(2), PENDING, attempted=False, retry_at=now + 5),
                                "t", DEFAULT_MAX_ATTEMPTS, now)
    assert (p["fgc"], p["next"]) == (-2, now + 5)  # deferred by our state: as it was
    _, p = claims.rescue_params(Result(_item(), PENDING, attempted=False), "t", 4, now)
    assert p["fgc"] is None
    sql, p = claims.rescue_params(Result(_item(), SUCCESS, http_status=200, file_path="a.jpg"),
                                  "t", DEFAULT_MAX_ATTEMPTS, now)
    assert "from_gbif_cache = 1" in sql and p["error_detail"] == "saved from GBIF's image cache"


# -- the database -----------------------------------------------------------------------

def test_the_rescue_queries_walk_their_index(tmp_path: Path) -> None:
    db = make_db(tmp_path, ["http://a.example.org/x.jpg"], first=FIRST)
    conn = stdlib_sqlite3.connect(db)
    for sql, args in ((claims._RESCUE_CLAIM, {"token": "t", "lease_until": 1.0, "now": 0.0,
                                              "n": 5}),
                      (claims._RESCUE_NEXT_DUE, {}), (claims._RESCUE_COUNT, {})):
        plan = " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
        assert "INDEX images_rescue" in plan and "TEMP B-TREE" not in plan, plan
    plan = " ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + claims._RESCUE_COUNT_OF,
                                               (1, "success")))
    assert "COVERING INDEX images_gbif_cache (from_gbif_cache=? AND status=?)" in plan, plan
    conn.close()
    assert claims.rescue_counts(stdlib_sqlite3.connect(tmp_path / "none.db")) == (0, 0)


def test_migration_adds_the_column_and_its_indexes(tmp_path: Path) -> None:
    db = make_db(tmp_path, ["http://a.example.org/x.jpg"], first=FIRST)
    conn = stdlib_sqlite3.connect(db)
    with conn:  # as a database from before this migration
        conn.execute("DROP INDEX images_rescue")
        conn.execute("DROP INDEX images_gbif_cache")
        conn.execute("DROP VIEW images_v")  # it names the column since v16
        conn.execute("ALTER TABLE images DROP COLUMN from_gbif_cache")
    conn.close()
    c = connect(db)
    with transaction(c):
        apply_migration(c, 13)
    c.close()
    assert SCHEMA_VERSION >= 13
    assert "from_gbif_cache" in {r[1] for r in q(db, "PRAGMA table_info(images)")}
    assert len(q(db, "SELECT name FROM sqlite_master WHERE name IN "
                     "('images_rescue', 'images_gbif_cache')")) == 2


def test_array_tasks_refuse_the_rescue(tmp_path: Path) -> None:
    db = make_db(tmp_path, ["http://a.example.org/x.jpg"], first=FIRST)
    cfg = config(tmp_path, db, shard="1/2", rescue_from_gbif_cache=True)
    with pytest.raises(UsageError, match="not for array tasks"):
        run_download(cfg)


# -- end to end against loopback servers -------------------------------------------------

@pytest.fixture()
def pair():
    """A publisher whose links are dead (127.0.0.21) and GBIF's cache (127.0.0.22)."""
    with ImageServer("127.0.0.21") as pub, ImageServer("127.0.0.22") as cache:
        yield pub, cache


def _collection(tmp_path: Path, pub: ImageServer, cache: ImageServer) -> tuple[Path, dict]:
    """Six images: four dead links the cache holds, one it does not, one a placeholder
    icon (not the cache's to cure, though it holds it), one that works."""
    urls = {"dead": [pub.url(f"/gone/{i}.jpg") for i in range(4)],
            "unknown": [pub.url("/gone/nowhere.jpg")], "icon": [pub.url("/tiny/icon.jpg")],
            "ok": [pub.url("/img/fine.jpg")]}
    flat = [u for k in ("dead", "unknown", "icon", "ok") for u in urls[k]]
    db = make_db(tmp_path, flat, first=FIRST)
    gid = {u: FIRST + i for i, u in enumerate(flat)}
    for u in urls["dead"] + urls["icon"]:
        cache.cache_media(gid[u], u)
    return db, {k: [gid[u] for u in v] for k, v in urls.items()}


def _cfg(tmp_path: Path, db: Path, cache: ImageServer, **kw):
    return config(tmp_path, db, threads=8, per_host_concurrency=4, max_size=2048,
                  rescue_from_gbif_cache=True, gbif_cache_url=cache.url("/v1/image/cache"),
                  **kw)


def _cache_requests(cache: ImageServer) -> int:
    return sum(n for p, n in cache.stats()["by_path"].items()
               if p.startswith("/v1/image/cache/"))


@pytest.mark.timeout(120)
def test_dead_links_are_rescued_one_request_at_a_time(tmp_path: Path, pair, capsys) -> None:
    pub, cache = pair
    db, ids = _collection(tmp_path, pub, cache)
    counts = run_download(_cfg(tmp_path, db, cache))
    assert counts["from_gbif_cache"] == 4 and counts["not_in_gbif_cache"] == 1
    rows = {r[0]: r[1:] for r in q(db, "SELECT gbif_id, status, from_gbif_cache, error_type, "
                                       "error_detail, prev_error, width, height, file_path, "
                                       "file_size, http_status FROM images")}
    root = tmp_path / "images"
    for gid in ids["dead"]:
        status, fgc, etype, detail, prev, w, h, path, size, http = rows[gid]
        assert (status, fgc, etype, http) == ("success", 1, None, 200)
        assert detail == "saved from GBIF's image cache"
        assert prev.startswith("http_404 (HTTP 404) at ") and "HTTP 404" in prev
        assert max(w, h) <= 1200 and (w, h) == (800, 1200)  # the cache's size, recorded
        assert (root / path).stat().st_size == size
    # the URL fetched is the cache's (the export's url column says where the file came from)
    for gid in ids["dead"]:
        ((url,),) = q(db, "SELECT fetched_url FROM images WHERE gbif_id = ?", (gid,))
        assert url.startswith(cache.url(f"/v1/image/cache/occurrence/{gid}/media/")), url
    # the cache had no copy: the publisher's verdict stays, and the try is recorded
    status, fgc, etype, detail, prev, *_ = rows[ids["unknown"][0]]
    assert (status, fgc, etype, prev) == ("failed_permanent", 0, "http_404", None)
    assert detail.startswith("HTTP 404")
    assert rows[ids["icon"][0]][:3] == ("failed_permanent", None, "placeholder_image")
    assert rows[ids["ok"][0]][:2] == ("success", None)
    # GBIF's one connection: never two requests at once, each eligible image asked once
    assert cache.stats()["max_concurrent"] == 1
    assert _cache_requests(cache) == 5
    assert q(db, "SELECT status, count(*) FROM gbif_ids GROUP BY 1 ORDER BY 1") == [
        ("done", 5), ("failed", 2)]
    out = capsys.readouterr().out
    assert "rescue from GBIF's image cache: 0 permanent failures to try" in out  # none yet
    assert "4 of them from GBIF's image cache, which had no copy of 1 more" in out
    # a second run asks the cache nothing: the unknown one was tried
    cache.reset_stats()
    run_download(_cfg(tmp_path, db, cache))
    assert _cache_requests(cache) == 0
    # the report says how many came from the cache; the counters agree with the rows
    capsys.readouterr()
    assert main(["report", "--db", str(db), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert (rep["images"]["from_gbif_cache"], rep["images"]["not_in_gbif_cache"]) == (4, 1)
    page = tmp_path / "report.html"
    assert main(["report", "--db", str(db), "--html", str(page)]) == 0
    assert "from GBIF's image cache: 4 saved" in capsys.readouterr().out
    row = html.escape("saved from GBIF's image cache")
    assert f"<td>{row}</td><td>4</td>" in page.read_text()
    assert main(["check", "--db", str(db), "--install-path", str(root)]) == 0


@pytest.mark.timeout(120)
def test_without_the_flag_the_cache_is_never_asked(tmp_path: Path, pair) -> None:
    pub, cache = pair
    db, ids = _collection(tmp_path, pub, cache)
    run_download(replace(_cfg(tmp_path, db, cache), rescue_from_gbif_cache=False))
    assert _cache_requests(cache) == 0
    assert q(db, "SELECT count(*) FROM images WHERE from_gbif_cache IS NOT NULL") == [(0,)]
    # failures of earlier runs are rescued when the flag comes
    run_download(_cfg(tmp_path, db, cache))
    assert q(db, "SELECT count(*) FROM images WHERE from_gbif_cache = 1") == [(4,)]


@pytest.mark.timeout(120)
def test_a_revisit_gives_the_cache_another_chance(tmp_path: Path, pair) -> None:
    pub, cache = pair
    db, ids = _collection(tmp_path, pub, cache)
    run_download(_cfg(tmp_path, db, cache))
    cache.cache_media(ids["unknown"][0], pub.url("/gone/nowhere.jpg"))  # cached since
    assert main(["verify", "--db", str(db), "--install-path", str(tmp_path / "images"),
                 "--revisit-failed-older-than", "0", "--revisit-only", "--no-bar"]) == 0
    run_download(_cfg(tmp_path, db, cache))  # the publisher fails again; the cache has it
    assert q(db, "SELECT status, from_gbif_cache FROM images WHERE gbif_id = ?",
             (ids["unknown"][0],)) == [("success", 1)]


def _cmd(tmp_path: Path, db: Path, cache: ImageServer) -> list[str]:
    return [sys.executable, "-m", "download_db", "download", "--db", str(db),
            "--install-path", str(tmp_path / "images"), "--lock-dir", str(tmp_path / "locks"),
            "--no-bar", "--per-host-rate", "0", "--timeout", "2,2", "--deadline", "5",
            "--lease", "30", "--wait-for-retries", "0", "--progress-every", "1000",
            "--contact", "tests@example.org", "--rescue-from-gbif-cache",
            "--gbif-cache-url", cache.url("/v1/image/cache")]


@pytest.mark.timeout(240)
def test_a_kill_mid_rescue_loses_nothing(tmp_path: Path, pair) -> None:
    pub, cache = pair
    n = 30
    db = make_db(tmp_path, [pub.url(f"/gone/k{i}.jpg") for i in range(n)], first=FIRST)
    for i in range(n):
        cache.cache_media(FIRST + i, pub.url(f"/gone/k{i}.jpg"))
    assert run_download(replace(_cfg(tmp_path, db, cache), rescue_from_gbif_cache=False))
    cache.gbif_cache_delay = 0.15  # 30 rescues one at a time: several seconds to kill in
    root = tmp_path / "images"
    runs = "SELECT count(*) FROM runs WHERE stage = 'download'"
    kills = 0
    for attempt in range(3):
        (before,), = q(db, runs)
        p = subprocess.Popen(_cmd(tmp_path, db, cache), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        started = time.monotonic() + 30
        while p.poll() is None and q(db, runs) == [(before,)] and time.monotonic() < started:
            time.sleep(0.01)
        time.sleep(0.6 + 0.4 * attempt)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait()
        on_disk = {x.relative_to(root).as_posix() for x in root.rglob("*.jpg")}
        saved = dict(q(db, "SELECT file_path, from_gbif_cache FROM images "
                           "WHERE status = 'success'"))
        assert on_disk <= set(saved), "a file on disk without its success row"
        assert all(v == 1 for v in saved.values())
    assert kills, "no run was killed mid-rescue"
    assert q(db, "SELECT count(*) FROM images WHERE from_gbif_cache = 1") != [(n,)]
    cache.reset_stats()  # a killed run's last request may still be on the server
    done = subprocess.run(_cmd(tmp_path, db, cache), cwd=ROOT, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    assert q(db, "SELECT status, from_gbif_cache, count(*) FROM images GROUP BY 1, 2") == [
        ("success", 1, n)]
    assert q(db, "SELECT count(*) FROM images WHERE claimed_by IS NOT NULL") == [(0,)]
    assert cache.stats()["max_concurrent"] == 1
    assert main(["check", "--db", str(db), "--install-path", str(root)]) == 0


# -- the rescue's queue in the scheduler ----------------------------------------------------

class _SlowFirstClaim:
    """A writer whose first claim for the rescue queue finds nothing and returns only
    after the test says so (the failure it should have found was written meanwhile)."""

    def __init__(self) -> None:
        self.in_claim, self.go = threading.Event(), threading.Event()
        self.calls = 0

    def claim(self, host_id: int, n: int) -> list[Item]:
        self.calls += 1
        if self.calls == 1:
            self.in_claim.set()
            self.go.wait(5)
            return []
        return [_item()]

    def next_due(self, host_id: int) -> float | None:
        return None

    def release(self, given_back) -> None:
        pass


def test_work_that_appears_during_a_claim_is_not_lost(tmp_path: Path) -> None:
    gate = HostGate(tmp_path / "locks", Politeness(concurrency=1))
    writer = _SlowFirstClaim()
    s = Scheduler(writer, gate, [(claims.RESCUE_QUEUE, "127.0.0.22", False)], per_host=1,
                  stop=threading.Event(), wait_for_retries=0)
    got: list = []
    t = threading.Thread(target=lambda: got.append(s.next()), daemon=True)
    t.start()
    assert writer.in_claim.wait(5)
    s.wake(claims.RESCUE_QUEUE)  # a publisher's image failed for good just now
    writer.go.set()
    t.join(10)
    gate.close()
    assert got and got[0] is not None and got[0][0].rescue, "the run ended without it"
