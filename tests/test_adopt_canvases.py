"""An adopted file of a manifest image still reads its manifest: the other canvases are found."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from PIL import Image

from download_db.db import connection
from download_db.db.claims import Item, Result
from download_db.download import adoption
from download_db.download.docs import DocCache
from download_db.download.stage import run_download
from download_db.download.worker import Worker, WorkerConfig
from download_db.files.layout import image_relpath
from download_db.report import collect
from download_db.report.check import check
from download_db.states import PENDING, SUCCESS
from download_db.web import fetch
from tests.helpers import config, make_db, q
from tests.imageserver import ImageServer

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def srv():
    with ImageServer("127.0.0.63") as s:
        yield s


def put_first_file(tmp_path: Path, gbif_id: int) -> bytes:
    """The first canvas's file under its final name, as a killed run leaves it."""
    path = tmp_path / "images" / image_relpath(gbif_id, 0, "jpg")
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (600, 800), (90, 120, 60)).save(buf, "JPEG")
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def rows(db: Path) -> list[tuple]:
    return q(db, "SELECT image_no, status, error_detail, file_path FROM images ORDER BY image_no")


def first_image_hits(srv: ImageServer, ident: str) -> int:
    """Requests for the first canvas's pixels (its service is /iiif/{2|3}/{ident}/...)."""
    return sum(n for p, n in srv.stats()["by_path"].items()
               if p.startswith((f"/iiif/2/{ident}/", f"/iiif/3/{ident}/")))


def all_checks_ok(db: Path, root: Path) -> bool:
    ro = collect.open_readonly(db)
    try:
        return check(ro, root).ok
    finally:
        ro.close()


def test_manifest_url_is_a_named_manifest_or_one_read_before():
    docs = DocCache()
    assert adoption.manifest_url(["https://a.org/iiif/x/manifest"], docs) == \
        "https://a.org/iiif/x/manifest"
    assert adoption.manifest_url(["https://a.org/x.jpg", "https://a.org/m/manifest.json"],
                                 docs) == "https://a.org/m/manifest.json"
    assert adoption.manifest_url(["https://a.org/p.json"], docs) is None
    docs.put("https://a.org/p.json", {"items": []})  # a manifest behind a plain URL
    assert adoption.manifest_url(["https://a.org/p.json"], docs) == "https://a.org/p.json"
    assert adoption.manifest_url(["https://a.org/iiif/x/info.json"], docs) is None


@pytest.mark.parametrize("version,n", [(2, 2), (3, 2), (2, 5), (3, 5)])
def test_an_adopted_first_canvas_still_gives_every_canvas(tmp_path, srv, version, n):
    ident = f"ad{version}{n}"
    db = make_db(tmp_path, [srv.url(f"/manifest/v{version}/{ident}/manifest?canvases={n}")],
                 first=3_600_000_001)
    data = put_first_file(tmp_path, 3_600_000_001)
    srv.reset_stats()
    counts = run_download(config(tmp_path, db))
    got = rows(db)
    assert [r[:2] for r in got] == [(i, "success") for i in range(n)]
    assert got[0][2] == adoption.DETAIL and counts["canvases"] == n - 1
    assert all((tmp_path / "images" / r[3]).is_file() for r in got)
    assert (tmp_path / "images" / got[0][3]).read_bytes() == data  # not fetched over
    assert first_image_hits(srv, ident) == 0
    assert srv.hits(f"/manifest/v{version}/{ident}/manifest") == 1
    assert q(db, "SELECT status, n_images FROM gbif_ids") == [("done", n)]
    assert all_checks_ok(db, tmp_path / "images")


def test_first_canvas_only_adopts_without_reading_the_manifest(tmp_path, srv):
    db = make_db(tmp_path, [srv.url("/manifest/v3/adonly/manifest?canvases=5")],
                 first=3_610_000_001)
    put_first_file(tmp_path, 3_610_000_001)
    srv.reset_stats()
    counts = run_download(config(tmp_path, db, first_canvas_only=True))
    assert [r[:3] for r in rows(db)] == [(0, "success", adoption.DETAIL)]
    assert "canvases" not in counts and srv.stats()["requests"] == 0


def test_a_manifest_failing_now_keeps_the_file_and_a_later_run_completes(tmp_path, srv):
    """The publisher's manifest answers 503 once: the adoption waits as a transient
    failure (the file stays under its final name, nothing fetched over it), and the
    next run adopts it and adds the canvases."""
    db = make_db(tmp_path, [srv.url("/manifest/v2/adfail/manifest?canvases=3&fail=1")],
                 first=3_620_000_001)
    data = put_first_file(tmp_path, 3_620_000_001)
    srv.reset_stats()
    run_download(config(tmp_path, db))
    ((no, status, detail, path),) = rows(db)
    assert (no, status, path) == (0, "failed_transient", None)
    assert detail.startswith(adoption.DETAIL + " waits for its manifest")
    first = tmp_path / "images" / image_relpath(3_620_000_001, 0, "jpg")
    assert first.read_bytes() == data
    conn = connection.connect(db)  # the backoff's wait, over; the 503's cooldown, over
    with connection.transaction(conn):
        conn.execute("UPDATE images SET next_attempt_at = 0")
        conn.execute("UPDATE hosts SET cooldown_until = NULL")
    conn.close()
    counts = run_download(config(tmp_path, db))
    assert [r[:2] for r in rows(db)] == [(0, "success"), (1, "success"), (2, "success")]
    assert rows(db)[0][2] == adoption.DETAIL and counts["canvases"] == 2
    assert first.read_bytes() == data and first_image_hits(srv, "adfail") == 0
    assert all_checks_ok(db, tmp_path / "images")


def test_a_manifest_gone_adopts_the_file_without_other_canvases(tmp_path, srv):
    db = make_db(tmp_path, [srv.url("/manifest/v3/adgone/manifest?canvases=3&fail=9&code=404")],
                 first=3_630_000_001)
    put_first_file(tmp_path, 3_630_000_001)
    run_download(config(tmp_path, db))
    ((_, status, detail, path),) = rows(db)
    assert status == "success" and path is not None
    assert detail.startswith(adoption.DETAIL + "; other canvases unknown") and "404" in detail


def test_an_array_task_queues_an_adopted_images_canvases(tmp_path, srv):
    db = make_db(tmp_path, [srv.url("/manifest/v2/adarr/manifest?canvases=2")],
                 first=3_640_000_001)
    put_first_file(tmp_path, 3_640_000_001)
    counts = run_download(config(tmp_path, db, shard="1/1"))
    assert counts["success"] == 1 and counts["canvases_queued"] == 1


class _Busy:
    """A host gate whose every host is cooling down (our own state) until `until`."""

    def __init__(self, until: float) -> None:
        self.until = until

    def acquire(self, host: str, now: float) -> float:
        return self.until


def test_our_own_host_state_defers_the_adoption_spending_nothing(tmp_path):
    """The manifest's host held back by our gate: the image is given back untouched
    (no attempt, no status change), its file left for the next claim to adopt."""
    item = Item(1, 3_650_000_001, 0, PENDING, 0, None,
                ["https://far.example/iiif/x/manifest"], 1)
    adopted = Result(item, SUCCESS, attempted=False, error_detail=adoption.DETAIL)
    w = Worker(WorkerConfig(tmp_path, fetch.Limits(1, 1, 1, 1 << 20)), _Busy(1e12), None,
               threading.Event(), session=None)
    got = w._adopted(adopted, {})
    assert (got.status, got.attempted, got.retry_at) == (PENDING, False, 1e12)
    assert w.requests == 0
