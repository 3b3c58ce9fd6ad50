"""Every canvas: a manifest's N canvases give N images (pure extraction, rows, runs, arrays)."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from download_db.arrays import plan
from download_db.arrays.merge import merge_tasks
from download_db.db import canvases, connection
from download_db.db.gbif_ids import finalize
from download_db.download.stage import run_download
from download_db.progress import RunContext
from download_db.report import collect
from download_db.report.check import check
from download_db.web import iiif
from tests.helpers import config, make_db, q
from tests.imageserver import ImageServer

pytestmark = pytest.mark.timeout(180)

IIIF = Path(__file__).parent / "data" / "iiif"
HARVARD = IIIF / "v2_harvard_ids_11927378_manifest.json"
UCLA = IIIF / "v3_ucla_body_is_600px_derivative_imageservice2_manifest.json"
YALE = IIIF / "v3_yale_yuag_obj69_imageservice2_manifest.json"
COOKBOOK_0283 = IIIF / "v3_cookbook_0283_missing_image_manifest.json"


def load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def images_of(path: Path) -> list[iiif.CanvasImage]:
    return iiif.canvas_images(iiif.parse_manifest(load(path)))


# -- the pure core: a manifest's canvases ---------------------------------------------


def test_v2_one_canvas_whose_body_renders_its_own_service_is_that_url_alone():
    (c,) = images_of(HARVARD)
    service = "https://ids.lib.harvard.edu/ids/iiif/11927378"
    assert c == iiif.CanvasImage(service, "ids.lib.harvard.edu",
                                 (f"{service}/full/full/0/default.jpg",))
    assert iiif.other_canvases(iiif.parse_manifest(load(HARVARD))) == []


def test_v3_a_600px_body_of_its_service_is_kept_the_worker_asks_the_target_first():
    (c,) = images_of(UCLA)
    service = "https://iiif.library.ucla.edu/iiif/2/ark%3A%2F21198%2Fz1087zv3"
    assert c.key == service and c.host == "iiif.library.ucla.edu"
    assert c.urls == (f"{service}/full/600,/0/default.jpg",)
    assert iiif.service_of_rendering(c.urls[0]) == service


def test_a_body_of_another_service_comes_after_the_service_info_json():
    ref = iiif.ImageRef("https://a.org/iiif/3/x", 3, "https://cdn.a.org/x/600.jpg")
    assert iiif.canvas_image(ref) == iiif.CanvasImage(
        "https://a.org/iiif/3/x", "a.org",
        ("https://a.org/iiif/3/x/info.json", "https://cdn.a.org/x/600.jpg"))
    assert iiif.canvas_image(iiif.ImageRef(None, 2, "https://b.org/p.jpg")) == \
        iiif.CanvasImage("https://b.org/p.jpg", "b.org", ("https://b.org/p.jpg",))
    assert iiif.canvas_image(iiif.ImageRef(None, 2, "relative/p.jpg")) is None


def test_v3_two_real_canvases_give_the_second_as_the_other():
    refs = iiif.parse_manifest(load(YALE))
    got = iiif.canvas_images(refs)
    assert len(got) == 2 and got[0].key != got[1].key
    assert iiif.other_canvases(refs) == [got[1]]
    assert all(c.host == "images.collections.yale.edu" for c in got)


def test_a_canvas_without_a_painted_image_gives_nothing():
    # four canvases, the second paints nothing: three images, in canvas order
    got = images_of(COOKBOOK_0283)
    assert [re.search(r"-(\d)-21198", c.key).group(1) for c in got] == ["1", "3", "4"]


def _manifest(version: int, services: list[str]) -> dict:
    """A minimal manifest painting each service's full image on its own canvas."""
    if version == 2:
        return {"sequences": [{"canvases": [
            {"images": [{"resource": {"@id": f"{s}/full/full/0/default.jpg",
                                      "service": {"@id": s, "profile": "level2"}}}]}
            for s in services]}]}
    return {"items": [
        {"type": "Canvas", "items": [{"items": [{"motivation": "painting", "body": {
            "id": f"{s}/full/max/0/default.jpg", "type": "Image",
            "service": [{"id": s, "type": "ImageService3"}]}}]}]}
        for s in services]}


@settings(max_examples=60, deadline=None)
@given(version=st.sampled_from([2, 3]),
       picks=st.lists(st.tuples(st.sampled_from(["a.org", "b.net", "c.edu"]),
                                st.integers(0, 6)), min_size=1, max_size=8))
def test_each_distinct_image_once_in_canvas_order_the_first_never_among_the_others(
        version, picks):
    services = [f"https://{h}/iiif/{n}" for h, n in picks]
    refs = iiif.parse_manifest(_manifest(version, services))
    got = iiif.canvas_images(refs)
    assert [c.key for c in got] == list(dict.fromkeys(services))
    assert all(c.host == urlhost(c.key) and c.urls[0].startswith(c.key + "/") for c in got)
    assert [c.key for c in iiif.other_canvases(refs)] == [s for s in dict.fromkeys(services)
                                                          if s != services[0]]


def urlhost(url: str) -> str:
    return re.match(r"https?://([^/:]+)", url).group(1)


# -- rows -------------------------------------------------------------------------------


def test_add_numbers_after_the_last_image_and_adds_each_key_once(tmp_path):
    db = make_db(tmp_path, ["https://x.org/a/manifest", "https://x.org/b.jpg"], first=42)
    conn = connection.connect(db)
    two = [("https://x.org/iiif/p2", "x.org", ["https://x.org/iiif/p2/info.json"]),
           ("https://new.org/iiif/p3", "new.org", ["https://new.org/iiif/p3/info.json"])]
    with connection.transaction(conn):
        added = canvases.add(conn, 1, two)
    with connection.transaction(conn):
        again = canvases.add(conn, 1, two)  # the manifest read once more
    conn.close()
    assert [h for _, h in added] == ["x.org", "new.org"] and again == []
    rows = q(db, "SELECT gbif_id, image_no, status, host, image_key, attribution_id IS NOT NULL "
                 "FROM images JOIN hosts USING (host_id) WHERE gbif_id = 42 ORDER BY image_no")
    assert rows == [(42, 0, "pending", "x.org", "https://x.org/a", 1),
                    (42, 1, "pending", "x.org", "https://x.org/iiif/p2", 1),
                    (42, 2, "pending", "new.org", "https://new.org/iiif/p3", 1)]
    assert q(db, "SELECT n_images FROM gbif_ids WHERE gbif_id = 42") == [(3,)]
    assert q(db, "SELECT host, n_images FROM hosts ORDER BY host") == [("new.org", 1),
                                                                      ("x.org", 3)]
    ro = collect.open_readonly(db)
    try:
        assert check(ro, None, files=False).ok  # counters, n_images, hosts all agree
    finally:
        ro.close()


# -- downloads against the loopback server ----------------------------------------------


@pytest.fixture(scope="module")
def srv():
    with ImageServer("127.0.0.61") as s:
        yield s


@pytest.fixture(scope="module")
def other():
    with ImageServer("127.0.0.62") as s:
        yield s


def saved(db: Path) -> list[tuple]:
    return q(db, "SELECT gbif_id, image_no, status, file_path FROM images ORDER BY gbif_id, "
                 "image_no")


def report(db: Path) -> dict:
    ro = collect.open_readonly(db)
    try:
        return collect.collect(ro, db=db)
    finally:
        ro.close()


@pytest.mark.parametrize("version", [2, 3])
def test_one_two_and_five_canvases_give_one_two_and_five_images(tmp_path, srv, version):
    urls = [srv.url(f"/manifest/v{version}/s{n}.json?canvases={n}") for n in (1, 2, 5)]
    db = make_db(tmp_path, urls, first=3_100_000_001)
    counts = run_download(config(tmp_path, db))
    rows = saved(db)
    per_gbif = {g: [r for r in rows if r[0] == g] for g in {r[0] for r in rows}}
    assert sorted(len(v) for v in per_gbif.values()) == [1, 2, 5]
    for g, rs in per_gbif.items():
        assert [r[1] for r in rs] == list(range(len(rs)))
        for _, no, status, path in rs:
            assert status == "success" and path.endswith(f"/{g}-{no:02d}.jpg")
            assert (tmp_path / "images" / path).is_file()
    assert counts["success"] == 8 and counts["canvases"] == 5
    rep = report(db)
    assert rep["images"]["by_status"]["success"] == 8 and rep["images"]["total"] == 8
    assert rep["gbif_ids"]["by_status"]["done"] == 3
    assert q(db, "SELECT sum(n_images) FROM gbif_ids") == [(8,)]
    # a second run finds nothing to do and adds nothing
    again = run_download(config(tmp_path, db))
    assert again.get("success", 0) == 0 and saved(db) == rows
    ro = collect.open_readonly(db)
    try:
        assert check(ro, tmp_path / "images").ok
    finally:
        ro.close()


def test_a_manifest_read_again_on_a_retry_adds_nothing(tmp_path, srv):
    db = make_db(tmp_path, [srv.url("/manifest/v2/twice.json?canvases=3")], first=3_200_000_001)
    run_download(config(tmp_path, db))
    # the first image goes back to pending (verify found its file gone): the manifest is
    # read again, the canvases it names are there already
    conn = connection.connect(db)
    with connection.transaction(conn):
        conn.execute("UPDATE images SET status = 'pending', file_path = NULL WHERE image_no = 0")
    conn.close()
    counts = run_download(config(tmp_path, db))
    assert counts["success"] == 1 and "canvases" not in counts
    assert [r[1:3] for r in saved(db)] == [(0, "success"), (1, "success"), (2, "success")]


def test_first_canvas_only_keeps_one_image(tmp_path, srv):
    db = make_db(tmp_path, [srv.url("/manifest/v3/one.json?canvases=5")], first=3_300_000_001)
    counts = run_download(config(tmp_path, db, first_canvas_only=True))
    assert [r[1:3] for r in saved(db)] == [(0, "success")] and "canvases" not in counts
    assert report(db)["gbif_ids"]["by_status"]["done"] == 1


def test_images_sharing_one_manifest_url_each_get_every_canvas(tmp_path, srv):
    """Two gbifIDs with the same manifest URL: fetched once (download/shared.py), and
    the image that links the first one's file gets the manifest's canvases too."""
    url = srv.url("/manifest/v3/shared.json?canvases=2")
    db = make_db(tmp_path, [url, url], first=3_450_000_001)
    srv.reset_stats()
    run_download(config(tmp_path, db))
    rows = saved(db)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (3_450_000_001, 0, "success"), (3_450_000_001, 1, "success"),
        (3_450_000_002, 0, "success"), (3_450_000_002, 1, "success")]
    assert all((tmp_path / "images" / r[3]).is_file() for r in rows)
    assert srv.stats()["by_path"].get("/manifest/v3/shared.json") == 1


@pytest.mark.parametrize("version", [2, 3])
def test_a_canvas_on_another_host_gets_that_host(tmp_path, srv, other, version):
    url = srv.url(f"/manifest/v{version}/far.json?canvases=3&others={other.base}")
    db = make_db(tmp_path, [url], first=3_400_000_001)
    other.reset_stats()
    run_download(config(tmp_path, db))
    rows = q(db, "SELECT image_no, status, host FROM images JOIN hosts USING (host_id) "
                 "ORDER BY image_no")
    assert rows == [(0, "success", srv.host), (1, "success", other.host),
                    (2, "success", other.host)]
    assert q(db, "SELECT n_images FROM hosts WHERE host = ?", (other.host,)) == [(2,)]
    assert any("/far-2/" in p for p in other.stats()["by_path"])


# -- job arrays -------------------------------------------------------------------------


def test_an_array_task_queues_canvases_and_the_merge_adds_them_once(tmp_path, srv):
    db = make_db(tmp_path, [srv.url("/manifest/v2/arr.json?canvases=2"),
                            srv.url("/img/plain.jpg")], first=3_500_000_001)
    assert plan.is_frozen(db)
    counts = run_download(config(tmp_path, db, shard="1/1"))
    assert counts["success"] == 2 and counts["canvases_queued"] == 1
    (task,) = plan.task_dbs(plan.tasks_dir_for(db))
    assert q(task, "SELECT count(*) FROM images") == [(2,)]  # no numbers given in a task
    copy = tmp_path / "task-copy.db"
    shutil.copy(task, copy)

    conn = connection.connect(db)
    st = merge_tasks(conn, db)
    assert st.canvases == 1
    shutil.copy(copy, task)  # a kill between the merge's commit and the delete
    assert merge_tasks(conn, db).canvases == 0
    finalize(conn, RunContext(out=io.StringIO(), bar=False))  # gbifIDs: finalize's job
    conn.close()
    rows = q(db, "SELECT gbif_id, image_no, status, image_id FROM images ORDER BY image_id")
    assert [r[:3] for r in rows] == [(3_500_000_001, 0, "success"), (3_500_000_002, 0, "success"),
                                     (3_500_000_001, 1, "pending")]
    assert rows[2][3] == 3  # a fresh id in the main database
    assert report(db)["gbif_ids"]["by_status"]["partial"] == 1  # not done: a canvas is left

    counts = run_download(config(tmp_path, db, shard="none"))  # the next run fetches it
    assert counts["success"] == 1
    assert [r[2] for r in saved(db)] == ["success"] * 3
    assert saved(db)[1][3].endswith("/3500000001-01.jpg")
    ro = collect.open_readonly(db)
    try:
        assert check(ro, tmp_path / "images").ok
    finally:
        ro.close()
