"""The downloader end to end against a loopback server: outcomes, files, IIIF, politeness."""

from __future__ import annotations

import hashlib
import io
import sqlite3 as stdlib_sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from download_db.cli.main import init_main
from download_db.config import DownloadConfig
from download_db.download.stage import run_download
from download_db.files.layout import image_relpath
from tests.helpers import row, write_multimedia
from tests.imageserver import ImageServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server():
    with ImageServer("127.0.0.2") as s:
        yield s


@pytest.fixture(scope="module")
def server2():
    with ImageServer("127.0.0.3") as s:
        yield s


def make_db(tmp_path: Path, urls: list[str]) -> Path:
    """One gbifID per URL (1001, 1002, ...), in order."""
    mm = write_multimedia(tmp_path / "m.txt", [row(1001 + i, u) for i, u in enumerate(urls)])
    db = tmp_path / "d.db"
    assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    return db


def config(tmp_path: Path, db: Path, **kw) -> DownloadConfig:
    base = DownloadConfig(db=db, install_path=tmp_path / "images", threads=4,
                          per_host_concurrency=4, per_host_rate=0, connect_timeout=2,
                          read_timeout=2, deadline=4, lease=30, wait_for_retries=0,
                          lock_dir=tmp_path / "locks", progress_every=1000, bar=False,
                          user_agent="gbif-download-db-tests")
    return replace(base, **kw)


def rows(db: Path) -> list[tuple]:
    c = stdlib_sqlite3.connect(db)
    try:
        return c.execute("SELECT gbif_id, status, error_type, error_detail, file_path, file_size, "
                         "sha256, width, height, attempts, http_status FROM images "
                         "ORDER BY gbif_id").fetchall()
    finally:
        c.close()


# (path on the server, expected status, expected error_type)
OUTCOMES = [
    ("/img/a.jpg", "success", None),
    ("/png/b.png", "success", None),
    ("/tif/c.tif", "success", None),
    ("/gif/d.gif", "success", None),
    ("/webp/e.webp", "success", None),
    ("/wrongct/f.jpg", "success", None),
    ("/octet/g.jpg", "success", None),
    ("/noct/h.jpg", "success", None),
    ("/redirect/3/i.jpg", "success", None),
    ("/status/404", "failed_permanent", "http_404"),
    ("/status/403", "failed_permanent", "http_403"),
    ("/status/410", "failed_permanent", "http_410"),
    ("/status/500", "failed_transient", "server_error"),
    ("/status/502", "failed_transient", "server_error"),
    ("/status/408", "failed_transient", "timeout"),
    ("/html/j", "failed_permanent", "invalid_content_type"),
    ("/text/k", "failed_permanent", "invalid_content_type"),
    ("/json/l", "failed_permanent", "invalid_content_type"),
    ("/xml/m", "failed_permanent", "invalid_content_type"),
    ("/disguised/n.jpg", "failed_permanent", "invalid_content_type"),
    ("/corrupt/o.jpg", "failed_permanent", "not_an_image"),
    ("/tiny/p.jpg", "failed_permanent", "placeholder_image"),
    ("/bomb/q.png", "failed_permanent", "too_large"),
    ("/empty/r.jpg", "failed_transient", "empty_response"),
    ("/trunc/s.jpg", "failed_transient", "truncated"),
    ("/loop/t.jpg", "failed_permanent", "too_many_redirects"),
    ("/badredirect/u.jpg", "failed_permanent", "bad_redirect"),
    ("/huge/v.bin?mb=64&length=1", "failed_permanent", "too_large"),
    ("/huge/w.bin?mb=64&length=0", "failed_permanent", "too_large"),
    ("/gzipbomb/x.jpg", "failed_permanent", "too_large"),
    ("/manifest/bad.json", "failed_permanent", "manifest_error"),  # broken IIIF JSON
    ("/manifest/v2/plain.json", "success", None),  # IIIF by content, whatever the URL says
]


def test_every_outcome_is_classified(tmp_path, server) -> None:
    urls = [server.url(p) for p, _, _ in OUTCOMES]
    db = make_db(tmp_path, urls)
    counts = run_download(config(tmp_path, db, max_bytes=8 << 20, max_pixels=200_000_000))
    got = rows(db)
    assert [(r[1], r[2]) for r in got] == [(s, e) for _, s, e in OUTCOMES], \
        [(p, r[1], r[2], (r[3] or "")[:80]) for (p, _, _), r in zip(OUTCOMES, got, strict=True)]
    assert counts["success"] == sum(1 for _, s, _ in OUTCOMES if s == "success")
    root = tmp_path / "images"
    for gid, status, _, _, file_path, size, sha, w, h, attempts, _ in got:
        assert attempts == 1
        if status == "success":
            data = (root / file_path).read_bytes()
            assert file_path == image_relpath(gid, 0, "jpg")
            assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha)
            with Image.open(io.BytesIO(data)) as im:
                assert im.format == "JPEG" and im.size == (w, h) and max(w, h) <= 1024
        else:
            assert file_path is None
    assert not list(root.rglob("*.part")), "temp files left behind"


def test_page_text_is_captured_without_scripts(tmp_path, server) -> None:
    db = make_db(tmp_path, [server.url("/html/page"), server.url("/disguised/x.jpg")])
    run_download(config(tmp_path, db))
    (_, _, _, html_detail, *_), (_, _, _, disguised, *_) = rows(db)
    assert html_detail.startswith("[text/html] ")
    assert "The requested specimen image is not available" in html_detail
    assert "alert" not in html_detail and "<" not in html_detail
    assert disguised.startswith("[non-image body, image/jpeg]")


def test_stall_and_trickle_do_not_hold_a_worker_past_the_deadline(tmp_path, server) -> None:
    db = make_db(tmp_path, [server.url("/stall/a.jpg"), server.url("/trickle/b.jpg?bps=5")])
    t0 = time.monotonic()
    run_download(config(tmp_path, db, deadline=2, read_timeout=1.5))
    assert time.monotonic() - t0 < 10
    assert [(r[1], r[2]) for r in rows(db)] == [("failed_transient", "timeout")] * 2


def test_image_processing(tmp_path, server) -> None:
    db = make_db(tmp_path, [server.url("/img/o.jpg?exif_orientation=6"),
                            server.url("/png/alpha.png"),
                            server.url("/img/small.jpg?w=300&h=400")])
    run_download(config(tmp_path, db, max_size=512, jpeg_quality=80))
    (r1, r2, r3) = rows(db)
    # 1500x2000 portrait with orientation 6 (rotate 90) becomes landscape; JPEG DCT
    # downscaling lands within 95% of the target long edge, never above it
    assert r1[7] > r1[8] and 0.95 * 512 <= r1[7] <= 512
    assert (r3[7], r3[8]) == (300, 400)  # never upscaled
    with Image.open(tmp_path / "images" / r2[4]) as im:
        assert im.mode == "RGB"
        # the server's PNG is transparent from 40% to 60% of its height: flattened on white
        assert min(im.getpixel((im.width // 2, im.height // 2))) > 240


def test_keep_original_stores_bytes_under_the_sniffed_extension(tmp_path, server) -> None:
    db = make_db(tmp_path, [server.url("/png/k.png"), server.url("/octet/k2.jpg")])
    run_download(config(tmp_path, db, keep_original=True))
    (r1, r2) = rows(db)
    assert r1[4].endswith("-00.png") and r2[4].endswith("-00.jpg")
    src = server.url("/png/k.png")
    import requests

    assert (tmp_path / "images" / r1[4]).read_bytes() == requests.get(src, timeout=5).content


def test_iiif_manifests_and_services(tmp_path, server) -> None:
    server.reset_stats()
    urls = [server.url("/manifest/v2/m2.json"), server.url("/manifest/v3/m3.json"),
            server.url("/iiif/3/i3/info.json"), server.url("/iiif/2/r2/full/max/0/default.jpg"),
            server.url("/manifest/empty.json")]
    db = make_db(tmp_path, urls)
    run_download(config(tmp_path, db))
    got = rows(db)
    assert [(r[1], r[2]) for r in got] == [("success", None)] * 4 + \
        [("failed_permanent", "manifest_error")]
    by_path = server.stats()["by_path"]
    # asked for the target size directly, never the full 3000x4000 rendering
    for ident, v in (("m2", 2), ("m3", 2), ("i3", 3), ("r2", 2)):
        assert by_path.get(f"/iiif/{v}/{ident}/full/!1024,1024/0/default.jpg") == 1, by_path
    assert not any("/full/full/" in p or "/full/max/" in p for p in by_path)
    # the v3 manifest's body.id is a 600 px derivative: the service was used instead
    assert all(max(r[7], r[8]) == 1024 for r in got[:4])


def test_iiif_steps_down_when_the_server_refuses_large_renderings(tmp_path, server) -> None:
    server.iiif_max_width["capped"] = 600
    db = make_db(tmp_path, [server.url("/manifest/v3/capped.json")])
    run_download(config(tmp_path, db))
    (r,) = rows(db)
    assert r[1] == "success" and max(r[7], r[8]) <= 1024


def test_per_host_concurrency_holds_across_threads(tmp_path, server) -> None:
    server.reset_stats()
    urls = [server.url(f"/slow/c{i}.jpg?delay=0.3") for i in range(12)]
    db = make_db(tmp_path, urls)
    run_download(config(tmp_path, db, threads=8, per_host_concurrency=2))
    assert all(r[1] == "success" for r in rows(db))
    assert server.stats()["max_concurrent"] <= 2


def test_per_host_rate_spaces_requests(tmp_path, server2) -> None:
    server2.reset_stats()
    db = make_db(tmp_path, [server2.url(f"/img/r{i}.jpg?w=64&h=64") for i in range(6)])
    run_download(config(tmp_path, db, per_host_rate=5))
    starts = sorted(t for t, _m, p in server2.stats()["log"] if p.startswith("/img/r"))
    assert len(starts) == 6
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert min(gaps) >= 0.15  # 5/s = 0.2 s apart, minus scheduling jitter


def test_429_cools_the_whole_host_down(tmp_path) -> None:
    with ImageServer("127.0.0.4") as s:
        urls = [s.url("/429?retry_after=2")] + [s.url(f"/img/after{i}.jpg?w=64&h=64")
                                               for i in range(3)]
        db = make_db(tmp_path, urls)
        run_download(config(tmp_path, db, threads=1, per_host_concurrency=1,
                            wait_for_retries=10))  # linger for the 2 s cooldown
        log = s.stats()["log"]
    t429 = next(t for t, _m, p in log if p.startswith("/429"))
    later = [t for t, _m, p in log if p.startswith("/img/after")]
    assert later and min(later) - t429 >= 1.9  # nothing during the cooldown
    got = rows(db)
    assert (got[0][1], got[0][2]) == ("failed_transient", "rate_limited")
    assert all(r[1] == "success" for r in got[1:])
    c = stdlib_sqlite3.connect(db)
    assert c.execute("SELECT cooldown_until > 0, cooldown_reason FROM hosts "
                     "WHERE host = '127.0.0.4'").fetchone() == (1, "HTTP 429 Retry-After")
    c.close()


def test_existing_valid_file_is_adopted_not_downloaded(tmp_path, server) -> None:
    server.reset_stats()
    db = make_db(tmp_path, [server.url("/img/adopt.jpg"), server.url("/img/broken.jpg")])
    root = tmp_path / "images"
    good = root / image_relpath(1001, 0, "jpg")
    good.parent.mkdir(parents=True)
    buf = io.BytesIO()
    Image.new("RGB", (640, 480), (10, 20, 30)).save(buf, "JPEG")
    good.write_bytes(buf.getvalue())
    (root / image_relpath(1002, 0, "jpg")).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    run_download(config(tmp_path, db))
    r1, r2 = rows(db)
    assert (r1[1], r1[3], r1[7], r1[8], r1[9]) == ("success", "adopted existing file", 640, 480, 0)
    assert r2[1] == "success" and r2[9] == 1
    assert server.stats()["by_path"].get("/img/adopt.jpg") is None
    assert server.stats()["by_path"].get("/img/broken.jpg") == 1


def test_transient_failures_are_retried_up_to_the_budget(tmp_path, server) -> None:
    db = make_db(tmp_path, [server.url("/flaky/f1.jpg?fail=1"), server.url("/status/503")])
    cfg = config(tmp_path, db, max_attempts=2)
    run_download(cfg)
    c = stdlib_sqlite3.connect(db)
    c.execute("UPDATE images SET next_attempt_at = 0 WHERE status = 'failed_transient'")
    c.commit()
    run_download(cfg)
    got = rows(db)
    assert (got[0][1], got[0][9]) == ("success", 2)
    assert (got[1][1], got[1][2], got[1][9]) == ("failed_transient", "server_error", 2)
    # the budget is spent: a third run leaves it alone; a bigger budget re-opens it
    c.execute("UPDATE images SET next_attempt_at = min(next_attempt_at, 0) WHERE gbif_id = 0")
    c.commit()
    run_download(cfg)
    assert rows(db)[1][9] == 2
    assert c.execute("SELECT status FROM gbif_ids WHERE gbif_id = 1002").fetchone() == ("failed",)
    run_download(replace(cfg, max_attempts=3))
    c.execute("UPDATE images SET next_attempt_at = 0 WHERE status = 'failed_transient'")
    c.commit()
    run_download(replace(cfg, max_attempts=3))
    assert rows(db)[1][9] == 3
    c.close()


def test_gbif_ids_follow_image_results(tmp_path, server) -> None:
    mm = write_multimedia(tmp_path / "m.txt", [
        row(1, server.url("/img/g1.jpg")), row(1, server.url("/img/g2.jpg")),
        row(2, server.url("/img/g3.jpg")), row(2, server.url("/status/404")),
        row(3, server.url("/status/500"))])
    db = tmp_path / "d.db"
    assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    run_download(config(tmp_path, db))
    c = stdlib_sqlite3.connect(db)
    assert c.execute("SELECT gbif_id, status, n_success FROM gbif_ids ORDER BY 1").fetchall() == \
        [(1, "done", 2), (2, "failed", 1), (3, "partial", 0)]
    assert c.execute("SELECT stage, outcome FROM runs ORDER BY run_id").fetchall() == \
        [("ingest", "ok"), ("download", "ok")]
    c.close()


def test_host_cooldown_survives_a_restart(tmp_path, server2) -> None:
    db = make_db(tmp_path, [server2.url("/img/cool.jpg?w=64&h=64")])
    c = stdlib_sqlite3.connect(db)
    c.execute("UPDATE hosts SET cooldown_until = ?, cooldown_reason = 'HTTP 429 Retry-After' "
              "WHERE host = '127.0.0.3'", (time.time() + 3600,))
    c.commit()
    c.close()
    server2.reset_stats()
    t0 = time.monotonic()
    run_download(config(tmp_path, db))  # fresh lock dir: the state comes from the table
    assert time.monotonic() - t0 < 10  # nothing due soon: the run ends
    assert server2.stats()["by_path"].get("/img/cool.jpg") is None
    (r,) = rows(db)
    assert (r[1], r[9]) == ("pending", 0)  # held back by our own state: not failed, no attempt
    c = stdlib_sqlite3.connect(db)
    due, claimed = c.execute("SELECT next_attempt_at, claimed_by FROM images").fetchone()
    assert claimed is None and due > time.time() + 3000  # due when the cooldown ends
    c.close()


def test_run_ends_when_all_work_is_done_with_the_default_linger(tmp_path, server) -> None:
    # regression: claimed rows (lease end in next_attempt_at) made the host look
    # "due in 15 minutes", so a finished run idled until the lease ran out
    db = make_db(tmp_path, [server.url(f"/img/end{i}.jpg?w=64&h=64") for i in range(12)])
    t0 = time.monotonic()
    run_download(config(tmp_path, db, wait_for_retries=300))
    assert time.monotonic() - t0 < 15
    assert {r[1] for r in rows(db)} == {"success"}


def test_a_closed_host_gives_its_claims_back(tmp_path, server, server2) -> None:
    # regression: items claimed for a host in cooldown held the --max-images
    # allowance, so an open host got nothing and the run waited for the cooldown
    urls = [server2.url(f"/img/closed{i}.jpg?w=64&h=64") for i in range(4)] + \
        [server.url(f"/img/open{i}.jpg?w=64&h=64") for i in range(4)]
    db = make_db(tmp_path, urls)
    c = stdlib_sqlite3.connect(db)
    c.execute("UPDATE hosts SET cooldown_until = ? WHERE host = '127.0.0.3'",
              (time.time() + 3600,))
    c.commit()
    c.close()
    t0 = time.monotonic()
    run_download(config(tmp_path, db, max_images=3, wait_for_retries=300))
    assert time.monotonic() - t0 < 15
    got = rows(db)
    assert [r[1] for r in got[:4]] == ["pending"] * 4  # the closed host: untouched
    assert sum(r[1] == "success" for r in got[4:]) == 3
    c = stdlib_sqlite3.connect(db)
    assert c.execute("SELECT count(*) FROM images WHERE claimed_by IS NOT NULL").fetchone() == (0,)
    c.close()
