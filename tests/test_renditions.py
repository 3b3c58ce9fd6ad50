"""Known renditions (web/renditions.py): each rule on its own URLs, and through the worker."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from download_db.db.claims import Item, Result
from download_db.download.worker import Worker, WorkerConfig
from download_db.states import SUCCESS
from download_db.web import fetch, renditions
from download_db.web.politeness import HostGate, Politeness, Slot
from tests.imageserver import ImageServer

INAT = "https://inaturalist-open-data.s3.amazonaws.com/photos"


# -- iNaturalist open data ---------------------------------------------------------------


@pytest.mark.parametrize(("url", "target", "want"), [
    # examples/multimedia_sample.txt's forms: .jpeg, .jpg, .png, with a cache-busting query
    (f"{INAT}/31610070/original.jpg", 1024, f"{INAT}/31610070/large.jpg"),
    (f"{INAT}/1234/original.jpeg", 1024, f"{INAT}/1234/large.jpeg"),
    (f"{INAT}/1234/original.png", 800, f"{INAT}/1234/large.png"),
    (f"{INAT}/1234/original.jpeg?1590000000", 1024, f"{INAT}/1234/large.jpeg?1590000000"),
    (f"{INAT}/1234/original.JPG", 500, f"{INAT}/1234/medium.JPG"),  # the smallest covering
    (f"{INAT}/1234/original.jpg", 256, f"{INAT}/1234/medium.jpg"),
    (f"{INAT}/1234/original.jpg", 240, f"{INAT}/1234/small.jpg"),
    (f"{INAT}/1234/original.jpg", 16, f"{INAT}/1234/thumb.jpg"),  # never the square crop
])
def test_inaturalist_original_gives_the_smallest_rendition_covering_the_target(url, target,
                                                                               want):
    assert renditions.candidates(url, target) == [want, url]


@pytest.mark.parametrize(("url", "target"), [
    (f"{INAT}/1234/original.jpg", 1025),  # larger than large: only the original covers it
    (f"{INAT}/1234/original.jpg", None),  # --keep-original
    (f"{INAT}/1234/large.jpg", 500),  # not an original: asked as given
    (f"{INAT}/1234/original.tif", 500),
    ("https://static.inaturalist.org/photos/1234/original.jpg", 500),  # no source for it
    ("https://example.org/photos/1234/original.jpg", 500),
    ("https://inaturalist-open-data.s3.amazonaws.com/other/1234/original.jpg", 500),
])
def test_inaturalist_rule_leaves_other_urls_alone(url, target):
    assert renditions.candidates(url, target) == [url]


def test_every_rule_names_its_source():
    for rule in renditions.RULES:
        assert rule.source and rule.hosts and rule.sizes
        assert [e for _, e in rule.sizes] == sorted(e for _, e in rule.sizes)


# -- through the worker, on the loopback server -------------------------------------------


@pytest.fixture(scope="module")
def srv() -> Iterator[ImageServer]:
    with ImageServer("127.0.0.13") as s:
        yield s


@pytest.fixture
def run(tmp_path: Path, srv: ImageServer, monkeypatch):
    """run(path, max_size, keep_original) -> Result, with the iNaturalist rule applied to
    the loopback host."""
    monkeypatch.setattr(renditions, "RULES",
                        (dataclasses.replace(renditions.INATURALIST, hosts=(srv.host,)),))
    srv.reset_stats()
    srv.gone_renditions.clear()
    limits = fetch.Limits(connect_timeout=2.0, read_timeout=5.0, deadline=20.0)
    gate = HostGate(tmp_path / "locks", Politeness(concurrency=2))
    session = fetch.new_session(limits)

    class NoWriter:
        def host_state(self, host: str, **fields) -> None:
            pass

    def _run(path: str, max_size: int = 1024, keep_original: bool = False) -> Result:
        cfg = WorkerConfig(root=tmp_path / "images", limits=limits, max_size=max_size,
                           keep_original=keep_original)
        worker = Worker(cfg, gate, NoWriter(), threading.Event(), session)
        item = Item(image_id=1, gbif_id=1234567890, image_no=0, status="pending", attempts=0,
                    error_type=None, host_id=1, urls=[srv.url(path)])
        slot = gate.acquire(srv.host)
        assert isinstance(slot, Slot)
        return worker.process(item, slot)

    yield _run
    session.close()
    gate.close()


def asked(srv: ImageServer) -> list[str]:
    return [t for _, _, t in srv.stats()["log"]]


def test_large_is_fetched_instead_of_the_original(run, srv):
    r = run("/photos/77/original.jpeg")
    assert r.status == SUCCESS and (r.width, r.height) == (768, 1024)
    assert asked(srv) == ["/photos/77/large.jpeg"]


def test_another_failure_of_the_rendition_is_the_answer(run, srv):
    srv.gone_renditions["large"] = 500
    r = run("/photos/79/original.jpg")
    assert (r.status, r.http_status) == ("failed_transient", 500)  # retried later, as is
    assert asked(srv) == ["/photos/79/large.jpg"]


def test_keep_original_fetches_the_original(run, srv):
    r = run("/photos/77/original.jpeg", keep_original=True)
    assert r.status == SUCCESS and (r.width, r.height) == (1536, 2048)
    assert asked(srv) == ["/photos/77/original.jpeg"]


@pytest.mark.parametrize("status", [403, 404])
def test_a_missing_rendition_falls_back_to_the_original(run, srv, status):
    srv.gone_renditions["large"] = status
    r = run("/photos/78/original.jpg")
    assert r.status == SUCCESS and (r.width, r.height) == (768, 1024)  # resized here
    assert asked(srv) == ["/photos/78/large.jpg", "/photos/78/original.jpg"]
