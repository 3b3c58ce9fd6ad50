"""web/fetch.py on its own: one GET against the loopback image server, every outcome classified."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import requests

from download_db.web import fetch
from download_db.web.fetch import FetchError, Limits
from download_db.web.politeness import DEFAULT_COOLDOWN
from tests.imageserver import ImageServer, image_bytes
from tests.reliability._support import HostileServer

# Short but not flaky on a loaded machine: nothing below needs more than one of these.
LIMITS = Limits(connect_timeout=2.0, read_timeout=2.0, deadline=10.0, max_bytes=4 << 20,
                max_redirects=3, user_agent="gbif-download-db-tests/1 (tests@example.org)")


@pytest.fixture(scope="module")
def srv() -> Iterator[ImageServer]:
    with ImageServer("127.0.0.2") as s:
        yield s


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    s = fetch.new_session(LIMITS)
    yield s
    s.close()


def failure(session: requests.Session, url: str, limits: Limits = LIMITS, **kw) -> FetchError:
    with pytest.raises(FetchError) as e:
        fetch.get(session, url, limits, **kw)
    return e.value


def test_an_image_is_returned_whole(srv, session) -> None:
    r = fetch.get(session, srv.url("/img/a.jpg"), LIMITS)
    assert (r.status, r.content_type, r.iiif_json) == (200, "image/jpeg", False)
    assert r.body == image_bytes("a")
    assert r.url == srv.url("/img/a.jpg")


def test_the_user_agent_and_identity_encoding_are_sent() -> None:
    with HostileServer("127.0.0.3") as hs:
        s = fetch.new_session(LIMITS)
        try:
            fetch.get(s, hs.url("/img/ua.jpg"), LIMITS)
        finally:
            s.close()
        [(target, headers)] = hs.headers_seen
    assert target == "/img/ua.jpg"
    assert headers["User-Agent"] == LIMITS.user_agent
    assert headers["Accept-Encoding"] == "identity"
    assert headers["Accept"].startswith("image/*")


@pytest.mark.parametrize("code", [404, 410])
def test_gone_is_permanent_and_not_the_hosts_fault(srv, session, code) -> None:
    e = failure(session, srv.url(f"/status/{code}"))
    assert (e.error_type, e.http_status, e.host_failure, e.cooldown) == (
        f"http_{code}", code, False, None)
    assert not e.transient
    assert f"Error {code}" in e.detail  # the page's text, for the report


@pytest.mark.parametrize("retry_after,cooldown,given", [
    ("7", 7.0, True),
    (None, DEFAULT_COOLDOWN, False),  # no Retry-After: a default pause, still a pause
])
def test_429_cools_the_host_down_without_blaming_it(srv, session, retry_after, cooldown,
                                                     given) -> None:
    e = failure(session, srv.url("/429" + (f"?retry_after={retry_after}" if retry_after else "")))
    assert (e.error_type, e.http_status, e.host_failure) == ("rate_limited", 429, None)
    assert (e.cooldown, e.retry_after_given) == (cooldown, given)
    assert e.transient


def test_503_with_retry_after_is_a_transient_host_failure_with_a_cooldown(srv, session) -> None:
    e = failure(session, srv.url("/503?retry_after=9"))
    assert (e.error_type, e.http_status, e.host_failure) == ("server_error", 503, True)
    assert (e.cooldown, e.retry_after_given) == (9.0, True)
    assert e.transient


@pytest.mark.parametrize("code", [500, 502, 503])
def test_5xx_is_a_transient_host_failure(srv, session, code) -> None:
    e = failure(session, srv.url(f"/status/{code}"))
    assert (e.error_type, e.http_status, e.host_failure, e.cooldown) == (
        "server_error", code, True, None)
    assert e.transient


def test_connection_refused(session) -> None:
    with socket.socket() as s:  # a port nobody listens on once this socket is closed
        s.bind(("127.0.0.4", 0))
        port = s.getsockname()[1]
    e = failure(session, f"http://127.0.0.4:{port}/img/a.jpg")
    assert (e.error_type, e.http_status, e.host_failure) == ("connection_broken", None, True)
    assert e.transient


def test_no_answer_within_the_read_timeout(srv, session) -> None:
    limits = Limits(connect_timeout=2.0, read_timeout=0.3, deadline=10.0)
    t0 = time.monotonic()
    e = failure(session, srv.url("/slow/a.jpg?delay=3"), limits)
    assert (e.error_type, e.host_failure) == ("timeout", True)
    assert e.transient and time.monotonic() - t0 < 2.5


def test_a_stalled_body_times_out(srv, session) -> None:
    limits = Limits(connect_timeout=2.0, read_timeout=0.3, deadline=10.0)
    e = failure(session, srv.url("/stall/a.jpg"), limits)
    assert (e.error_type, e.host_failure) == ("timeout", True)


def test_the_total_deadline_ends_a_trickling_body(srv, session) -> None:
    # every read gets bytes well within the read timeout: only the deadline can stop it
    limits = Limits(connect_timeout=2.0, read_timeout=5.0, deadline=1.0)
    t0 = time.monotonic()
    e = failure(session, srv.url("/trickle/a.jpg?bps=20000"), limits)
    took = time.monotonic() - t0
    assert (e.error_type, e.host_failure) == ("timeout", True)
    assert "deadline of 1s" in e.detail
    assert 1.0 <= took < 2.5  # the watchdog ticks every 0.2 s


@pytest.mark.parametrize("length", [1, 0])
def test_a_body_above_the_size_cap_is_refused(srv, session, length) -> None:
    limits = Limits(max_bytes=1 << 20)
    e = failure(session, srv.url(f"/huge/h.bin?mb=3&length={length}"), limits)
    assert (e.error_type, e.http_status, e.host_failure) == ("too_large", 200, False)
    assert not e.transient
    if length:
        assert "Content-Length" in e.detail  # refused before reading the body
    else:
        assert "body exceeds" in e.detail


def test_a_body_short_of_its_content_length_is_truncated(srv, session) -> None:
    e = failure(session, srv.url("/trunc/a.jpg"))
    assert (e.error_type, e.host_failure) == ("truncated", True)
    assert e.transient


def test_a_reset_mid_body_is_transient(srv, session) -> None:
    e = failure(session, srv.url("/reset/a.jpg"))
    assert e.error_type in ("connection_broken", "truncated")  # the kernel decides which
    assert e.host_failure is True and e.transient


def test_an_empty_body_is_transient(srv, session) -> None:
    e = failure(session, srv.url("/empty/a.jpg"))
    assert (e.error_type, e.http_status, e.host_failure) == ("empty_response", 200, True)


def test_redirects_are_followed_up_to_the_limit(srv, session) -> None:
    r = fetch.get(session, srv.url("/redirect/2/r.jpg"), LIMITS)  # 3 hops: the limit
    assert r.url == srv.url("/img/r.jpg") and r.body == image_bytes("r")
    e = failure(session, srv.url("/redirect/3/r.jpg"))  # 4 hops
    assert (e.error_type, e.host_failure) == ("too_many_redirects", False)
    assert not e.transient


def test_a_redirect_loop_and_a_redirect_to_another_scheme(srv, session) -> None:
    assert failure(session, srv.url("/loop/l.jpg")).error_type == "too_many_redirects"
    e = failure(session, srv.url("/badredirect/b.jpg"))
    assert (e.error_type, e.host_failure) == ("bad_redirect", False)


def test_an_html_page_is_invalid_content_with_its_text_captured(srv, session) -> None:
    e = failure(session, srv.url("/html/p"))
    assert (e.error_type, e.http_status, e.host_failure, e.cooldown) == (
        "invalid_content_type", 200, False, None)
    assert not e.transient
    assert e.detail.startswith("[text/html] ")
    assert "The requested specimen image is not available" in e.detail
    assert "<" not in e.detail and "alert" not in e.detail  # text, not markup or script


def test_html_sent_as_image_jpeg_is_caught_by_content(srv, session) -> None:
    e = failure(session, srv.url("/disguised/d.jpg"))
    assert e.error_type == "invalid_content_type"
    assert e.detail.startswith("[non-image body, image/jpeg] ") and "Image not found" in e.detail


def test_a_jpeg_sent_as_text_html_is_a_jpeg(srv, session) -> None:
    r = fetch.get(session, srv.url("/wrongct/w.jpg"), LIMITS)
    assert r.body == image_bytes("w") and r.content_type == "text/html"


def test_iiif_json_where_an_image_was_expected_is_flagged_not_refused(srv, session) -> None:
    r = fetch.get(session, srv.url("/manifest/v3/m1.json"), LIMITS)
    assert r.iiif_json and r.body.lstrip().startswith(b"{")
    text = fetch.get(session, srv.url("/json/j"), LIMITS, want_text=True)  # asked for JSON
    assert text.body == b'{"error": "not found"}' and not text.iiif_json
