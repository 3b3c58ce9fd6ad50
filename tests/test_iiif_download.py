"""IIIF through the worker against the loopback server: levels 0-2, no upscaling, refusals."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from download_db.db.claims import Item, Result
from download_db.download.docs import DocCache
from download_db.download.worker import Worker, WorkerConfig
from download_db.states import FAILED_PERMANENT, SUCCESS
from download_db.web import fetch
from download_db.web.politeness import HostGate, Politeness, Slot
from tests.imageserver import ImageServer

LIMITS = fetch.Limits(connect_timeout=2.0, read_timeout=5.0, deadline=20.0)


@pytest.fixture(scope="module")
def srv() -> Iterator[ImageServer]:
    with ImageServer("127.0.0.12") as s:
        yield s


@pytest.fixture
def run(tmp_path: Path, srv: ImageServer):
    """run(path, max_size=256) -> Result: one image whose only candidate is path."""
    srv.reset_stats()
    srv.iiif_images.clear()
    srv.iiif_max_width.clear()
    gate = HostGate(tmp_path / "locks", Politeness(concurrency=2))
    session = fetch.new_session(LIMITS)
    docs = DocCache()  # one per process, as in a run

    def _run(path: str, max_size: int = 256, keep_original: bool = False) -> Result:
        cfg = WorkerConfig(root=tmp_path / "images", limits=LIMITS, max_size=max_size,
                           keep_original=keep_original, docs=docs)
        worker = Worker(cfg, gate, _NoWriter(), threading.Event(), session)
        item = Item(image_id=1, gbif_id=1234567890, image_no=0, status="pending", attempts=0,
                    error_type=None, host_id=1, urls=[srv.url(path)])
        slot = gate.acquire(srv.host)
        assert isinstance(slot, Slot)
        return worker.process(item, slot)

    _run.gate = gate  # type: ignore[attr-defined]
    yield _run
    session.close()
    gate.close()


class _NoWriter:
    def host_state(self, host: str, **fields) -> None:
        pass


def asked(srv: ImageServer) -> list[str]:
    return [t for _, _, t in srv.stats()["log"]]


@pytest.mark.parametrize(("v", "size"), [("2", "375,"), ("3", "375,500")])
def test_level0_service_is_asked_for_a_listed_size_only(run, srv, v, size):
    srv.iiif_images["static"] = {"level": 0}
    r = run(f"/iiif/{v}/static/info.json")
    assert r.status == SUCCESS
    # 375x500 is the smallest listed size covering 256 px; nothing computed is asked for
    assert asked(srv) == [f"/iiif/{v}/static/info.json",
                          f"/iiif/{v}/static/full/{size}/0/default.jpg"]


def test_a_404_for_an_unlisted_size_reads_the_info_json_and_takes_a_listed_one(run, srv):
    # the manifest says level 2, the service is a static level 0 one
    srv.iiif_images["sheet"] = {"level": 0}
    r = run("/manifest/v2/sheet.json")
    assert r.status == SUCCESS
    assert asked(srv) == ["/manifest/v2/sheet.json",
                          "/iiif/2/sheet/full/!256,256/0/default.jpg",  # 404: no such file
                          "/iiif/2/sheet/info.json",
                          "/iiif/2/sheet/full/375,/0/default.jpg"]


@pytest.mark.parametrize("v", ["2", "3"])
def test_a_small_image_comes_back_at_its_own_size(run, srv, v):
    # a 2.1 server would answer !1024,1024 with 683x1024: full/max is asked instead
    srv.iiif_images["small"] = {"size": (600, 900), "upscale": True}
    r = run(f"/iiif/{v}/small/info.json", max_size=1024)
    assert r.status == SUCCESS and (r.width, r.height) == (600, 900)
    assert asked(srv)[1] == f"/iiif/{v}/small/full/{'max' if v == '3' else 'full'}/0/default.jpg"


def test_a_refusal_steps_to_the_size_the_info_json_allows(run, srv):
    srv.iiif_max_width["capped"] = 600  # 403 above; info.json says maxWidth 600
    r = run("/manifest/v3/capped.json", max_size=1024)
    assert r.status == SUCCESS
    # maxWidth alone also bounds the height (the spec's inference): 450x600
    assert (r.width, r.height) == (450, 600)
    assert asked(srv) == ["/manifest/v3/capped.json",
                          "/iiif/2/capped/full/!1024,1024/0/default.jpg",  # 403
                          "/iiif/2/capped/info.json",
                          "/iiif/2/capped/full/!450,600/0/default.jpg"]


def test_keep_original_asks_for_the_whole_image(run, srv):
    r = run("/iiif/3/orig/info.json", keep_original=True)
    assert r.status == SUCCESS and (r.width, r.height) == (3000, 4000)
    assert asked(srv)[1:] == ["/iiif/3/orig/full/max/0/default.jpg"]


def test_a_listed_size_that_is_gone_is_a_verdict(run, srv):
    srv.iiif_images["gone"] = {"level": 0, "size": (0, 0)}  # lists nothing, serves nothing
    r = run("/iiif/2/gone/info.json")
    assert r.status == FAILED_PERMANENT


def test_a_manifest_is_fetched_once_per_image_when_the_image_host_is_busy(run, srv):
    with ImageServer("127.0.0.18") as pixels:
        path = f"/manifest/v2/elsewhere.json?images={pixels.base}"
        gate_slots = []
        for _ in range(2):  # the image host's slots are taken (other work, other processes)
            got = run.gate.acquire(pixels.host)
            assert isinstance(got, Slot)
            gate_slots.append(got)
        first = run(path)
        assert (first.status, first.attempted) == ("pending", False)  # deferred: ours
        for s in gate_slots:
            s.release()
        second = run(path)
        assert second.status == SUCCESS
        # the manifest was read once; its image asked for once it could be
        assert srv.hits("/manifest/v2/elsewhere.json") == 1
        assert pixels.hits("/iiif/2/elsewhere/full/!256,256/0/default.jpg") == 1
