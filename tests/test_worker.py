"""download/worker.py on one Item: candidates in order, IIIF, decoding, temp file, verdict."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from download_db.db.claims import Item, Result
from download_db.download.worker import Worker, WorkerConfig
from download_db.files.layout import image_relpath
from download_db.states import FAILED_PERMANENT, FAILED_TRANSIENT, PENDING, SUCCESS
from download_db.web import fetch
from download_db.web.politeness import HostGate, Politeness, Slot
from tests.imageserver import ImageServer
from tests.reliability._support import HostileServer

GID = 1234567890
LIMITS = fetch.Limits(connect_timeout=2.0, read_timeout=2.0, deadline=10.0)


class FakeWriter:
    """The writer's host-state side: what the worker publishes about a host."""

    def __init__(self) -> None:
        self.host_states: list[tuple[str, dict]] = []

    def host_state(self, host: str, **fields) -> None:
        self.host_states.append((host, fields))


@pytest.fixture(scope="module")
def srv() -> Iterator[ImageServer]:
    with ImageServer("127.0.0.5") as s:
        yield s


@pytest.fixture
def env(tmp_path: Path, srv: ImageServer):
    """(run, writer, root): run(*urls) processes one image with these candidates (a path is
    on ``base``); the test holds the first candidate's host slot, as the scheduler would."""
    srv.reset_stats()
    root = tmp_path / "images"
    gate = HostGate(tmp_path / "locks", Politeness(concurrency=2))
    session = fetch.new_session(LIMITS)
    writer = FakeWriter()
    worker = Worker(WorkerConfig(root=root, limits=LIMITS, max_size=256), gate, writer,
                    threading.Event(), session)

    def run(*paths: str, base: str = srv.base) -> Result:
        item = Item(image_id=1, gbif_id=GID, image_no=0, status="pending", attempts=0,
                    error_type=None, host_id=1,
                    urls=[p if p.startswith("http") else base + p for p in paths])
        slot = gate.acquire(item.urls[0].split("/")[2].split(":")[0])
        assert isinstance(slot, Slot)
        return worker.process(item, slot)

    yield run, writer, root
    session.close()
    gate.close()


def test_the_best_candidate_is_the_only_one_fetched_when_it_works(env, srv) -> None:
    run, _, _ = env
    r = run("/img/best.jpg", "/img/other.jpg")
    assert r.status == SUCCESS
    assert (srv.hits("/img/best.jpg"), srv.hits("/img/other.jpg")) == (1, 0)


def test_a_failed_candidate_falls_back_to_the_next(env, srv) -> None:
    run, _, _ = env
    r = run("/status/404", "/img/second.jpg")
    assert r.status == SUCCESS and r.http_status == 200
    assert (srv.hits("/status/404"), srv.hits("/img/second.jpg")) == (1, 1)


def test_the_result_describes_the_temp_file_under_its_final_name(env) -> None:
    run, _, root = env
    r = run("/img/a.jpg?w=600&h=800")
    assert r.status == SUCCESS and r.attempted
    assert r.file_path == image_relpath(GID, 0, "jpg")
    temp = Path(r.temp)  # type: ignore[arg-type]
    assert temp.parent == (root / r.file_path).parent  # renamed later, atomically
    assert not (root / r.file_path).exists()  # the writer renames it once the row is in
    data = temp.read_bytes()
    assert (r.file_size, r.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert (r.width, r.height) == (192, 256)  # resized to the 256 px max edge, 3:4 kept
    assert data[:3] == b"\xff\xd8\xff"


def test_an_html_page_is_a_permanent_invalid_content_type(env, srv) -> None:
    run, writer, _ = env
    r = run("/html/page")
    assert (r.status, r.error_type, r.http_status) == (FAILED_PERMANENT, "invalid_content_type",
                                                       200)
    assert "The requested specimen image is not available" in r.error_detail
    assert r.file_path is None and r.temp is None
    # the host's sample of what it sends, for the report
    assert [(h, list(f)) for h, f in writer.host_states] == [(srv.host, ["sample_detail"])]


def test_a_transient_error_is_retried_later_and_beats_a_permanent_one(env) -> None:
    run, _, _ = env
    r = run("/status/503")
    assert (r.status, r.error_type, r.http_status) == (FAILED_TRANSIENT, "server_error", 503)
    # another candidate gone for good must not make the image a permanent failure
    r = run("/status/404", "/status/500")
    assert (r.status, r.error_type, r.http_status) == (FAILED_TRANSIENT, "server_error", 500)
    r = run("/status/404", "/status/410")
    assert (r.status, r.error_type, r.http_status) == (FAILED_PERMANENT, "http_404", 404)


def test_a_retry_after_cools_the_host_down_and_is_published(env, srv) -> None:
    run, writer, _ = env
    r = run("/429?retry_after=30")
    assert (r.status, r.error_type) == (FAILED_TRANSIENT, "rate_limited")
    [(host, fields)] = writer.host_states
    assert host == srv.host and fields["cooldown_reason"] == "HTTP 429 Retry-After"
    # the host is closed now: an image with a candidate there is deferred, not failed,
    # whatever its other candidates say, and the closed host is not asked
    before = srv.stats()["requests"]
    with ImageServer("127.0.0.7") as other:
        r = run(other.url("/status/404"), "/img/later.jpg")
    assert (r.status, r.attempted) == (PENDING, False)
    assert r.retry_at == pytest.approx(fields["cooldown_until"])
    assert srv.stats()["requests"] == before


def test_a_iiif_manifest_is_resolved_to_its_image_at_the_target_size(env, srv) -> None:
    run, _, _ = env
    r = run("/manifest/v2/sheet/manifest")
    assert r.status == SUCCESS
    assert (r.width, r.height) == (192, 256)
    asked = [t for _, _, t in srv.stats()["log"]]
    assert asked == ["/manifest/v2/sheet/manifest", "/iiif/2/sheet/full/!256,256/0/default.jpg"]


def test_a_body_that_does_not_decode_is_a_permanent_failure(env, srv) -> None:
    run, _, root = env
    r = run("/corrupt/c.jpg")
    assert (r.status, r.error_type) == (FAILED_PERMANENT, "not_an_image")
    assert r.temp is None and not root.exists()  # nothing written for it


def test_nothing_is_written_outside_the_image_root(tmp_path, env) -> None:
    run, _, root = env
    with HostileServer("127.0.0.6") as hs:  # headers that try to name the file
        r = run("/cd/x.jpg?fn=../../../escaped.jpg", base=hs.base)
    assert r.status == SUCCESS
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()
               and "locks" not in p.parts}
    assert written == {f"images/{Path(r.file_path).parent.as_posix()}/{Path(r.temp).name}"}
