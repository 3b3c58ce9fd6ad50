"""Hostile publishers: every way a server can misbehave is classified exactly (status and
error_type as in the README's error-type table), and none holds a worker past --deadline.

Each behaviour gets its own database with one image and runs the real downloader
(in-process, like tests/test_download.py) with connect/read timeouts far above the
deadline, so that only --deadline can cut a slow server off. The wall time of the whole
run bounds the time the worker spent on the image.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from download_db.download.stage import run_download
from tests.helpers import DOWNLOAD_DEADLINE, config, make_db, q, rows
from tests.reliability._support import SOAK, HostileServer, execute

pytestmark = pytest.mark.timeout(120 * SOAK)

DEADLINE = DOWNLOAD_DEADLINE
# start-up of a run (database, recovery, threads), the deadline watchdog's 0.2 s tick,
# and the final commit; a worker held past the deadline shows up as seconds more
OVERHEAD = 1.5
# a request that another worker had already sent when a 429 came back is legitimate;
# one sent this long after the 429 left the server is not
IN_FLIGHT = 0.25


@pytest.fixture(scope="module")
def server():
    with HostileServer("127.0.0.13") as s:
        yield s


def fetch_one(tmp_path: Path, url: str, **kw) -> tuple[tuple, float]:
    db = make_db(tmp_path, [url])
    t0 = time.monotonic()
    run_download(config(tmp_path, db, **kw))
    seconds = time.monotonic() - t0
    (r,) = rows(db)
    return r, seconds


def closed_port(host: str) -> int:
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return port


# (id, path on the hostile server, status, error_type, extra keyword arguments)
BEHAVIOURS = [
    ("html-200", "/html/a", "failed_permanent", "invalid_content_type", {}),
    ("text-plain", "/text/b", "failed_permanent", "invalid_content_type", {}),
    ("json", "/json/c", "failed_permanent", "invalid_content_type", {}),
    ("xml", "/xml/c2", "failed_permanent", "invalid_content_type", {}),
    ("html-body-as-image-jpeg", "/disguised/c3.jpg", "failed_permanent",
     "invalid_content_type", {}),
    ("jpeg-sent-as-text-html", "/wrongct/d.jpg", "success", None, {}),
    ("jpeg-as-octet-stream", "/octet/d2.jpg", "success", None, {}),
    ("missing-content-type", "/noct/e.jpg", "success", None, {}),
    ("truncated-body", "/trunc/f.jpg", "failed_transient", "truncated", {}),
    ("reset-mid-body", "/reset/g.jpg", "failed_transient", "truncated", {}),
    ("empty-200", "/empty/g2.jpg", "failed_transient", "empty_response", {}),
    ("stall-before-headers", "/slow/h0.jpg?delay=30", "failed_transient", "timeout", {}),
    ("stall-after-headers", "/stall/h.jpg", "failed_transient", "timeout", {}),
    ("trickle-1-byte-per-second", "/trickle/i.jpg?bps=1", "failed_transient", "timeout", {}),
    ("endless-body-past-max-bytes", "/huge/j.bin?mb=4096&length=0", "failed_permanent",
     "too_large", {"max_bytes": 1 << 20}),
    ("content-length-past-max-bytes", "/huge/j2.bin?mb=64&length=1", "failed_permanent",
     "too_large", {"max_bytes": 1 << 20}),
    ("gzip-bomb", "/gzipbomb/k.jpg", "failed_permanent", "too_large", {}),
    ("pixel-bomb", "/bomb/l.png", "failed_permanent", "too_large", {}),
    ("placeholder-1x1", "/tiny/m.jpg", "failed_permanent", "placeholder_image", {}),
    ("corrupt-jpeg", "/corrupt/m2.jpg", "failed_permanent", "not_an_image", {}),
    ("redirect-loop", "/loop/n.jpg", "failed_permanent", "too_many_redirects", {}),
    ("redirect-to-ftp", "/badredirect/o.jpg", "failed_permanent", "bad_redirect", {}),
    ("redirect-to-file", "/goto/p?to=file:///etc/passwd", "failed_permanent", "bad_redirect",
     {}),
    ("redirect-to-javascript", "/goto/p2?to=javascript:alert(1)", "failed_permanent",
     "bad_redirect", {}),
    ("redirect-to-data-url", "/goto/p3?to=data:image/jpeg;base64,/9j/4AAQ", "failed_permanent",
     "bad_redirect", {}),
    ("http-404-page", "/status/404", "failed_permanent", "http_404", {}),
    ("http-408", "/status/408", "failed_transient", "timeout", {}),
    ("http-500", "/status/500", "failed_transient", "server_error", {}),
]


@pytest.mark.parametrize(("path", "status", "error_type", "kw"),
                         [b[1:] for b in BEHAVIOURS], ids=[b[0] for b in BEHAVIOURS])
def test_behaviour_is_classified_within_the_deadline(tmp_path, server, path, status,
                                                     error_type, kw) -> None:
    r, seconds = fetch_one(tmp_path, server.url(path), **kw)
    _gid, got_status, got_type, detail, http_status, file_path, attempts = r
    assert (got_status, got_type) == (status, error_type), (detail or "")[:300]
    assert seconds <= DEADLINE + OVERHEAD, f"held the worker {seconds:.1f}s: {detail}"
    assert attempts == 1
    if status == "success":
        assert file_path and (tmp_path / "images" / file_path).is_file()
        assert http_status == 200
    else:
        assert file_path is None
        assert not list((tmp_path / "images").rglob("*.*")), "something was saved"
    if error_type == "timeout" and "status" not in path:
        assert seconds >= DEADLINE - 0.3, "cut off before the deadline: not the deadline's work"


def test_html_error_detail_has_the_page_text(tmp_path, server) -> None:
    (r, _s) = fetch_one(tmp_path, server.url("/html/page"))
    detail = r[3]
    assert detail.startswith("[text/html] ")
    assert "The requested specimen image is not available. Please contact the herbarium." \
        in detail
    # what a person sees: no tags, no script (alert), no style (font-family)
    assert "<" not in detail and "alert" not in detail and "font-family" not in detail
    assert q(tmp_path / "d.db", "SELECT substr(sample_detail, 1, 12) FROM hosts") == \
        [("[text/html] ",)]


@pytest.mark.parametrize(("path", "needle"), [("/text/t", "[text/plain] Image temporarily "
                                                          "unavailable"),
                                              ("/json/j", '[application/json] {"error": '
                                                          '"not found"}')])
def test_text_and_json_error_detail(tmp_path, server, path, needle) -> None:
    (r, _s) = fetch_one(tmp_path, server.url(path))
    assert r[3].startswith(needle), r[3]


# --------------------------------------------------------------------------- network


def test_dns_failure(tmp_path) -> None:
    r, seconds = fetch_one(tmp_path, "http://nonexistent.invalid/x.jpg")
    assert (r[1], r[2]) == ("failed_transient", "dns_error"), r[3]
    assert seconds <= DEADLINE + OVERHEAD


def test_refused_connection(tmp_path) -> None:
    r, seconds = fetch_one(tmp_path, f"http://127.0.0.13:{closed_port('127.0.0.13')}/x.jpg")
    assert (r[1], r[2]) == ("failed_transient", "connection_broken"), r[3]
    assert seconds <= DEADLINE + OVERHEAD


def test_tls_to_a_plain_http_port(tmp_path, server) -> None:
    r, seconds = fetch_one(tmp_path, server.url("/img/tls.jpg").replace("http://", "https://"))
    assert (r[1], r[2]) == ("failed_transient", "tls_error"), r[3]
    assert seconds <= DEADLINE + OVERHEAD


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    """A loopback HTTPS server whose certificate nobody signed (openssl makes it)."""
    d = tmp_path_factory.mktemp("tls")
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.14", "-keyout", str(d / "k.pem"),
                        "-out", str(d / "c.pem")], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"openssl cannot make a self-signed certificate here: {e}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "c.pem", d / "k.pem")
    lsock = socket.socket()
    lsock.bind(("127.0.0.14", 0))
    lsock.listen(16)
    stop = threading.Event()

    def serve() -> None:
        lsock.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except OSError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(65536)
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            except (OSError, ssl.SSLError):
                pass  # the client refused our certificate: what we expect
            finally:
                conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"https://127.0.0.14:{lsock.getsockname()[1]}"
    stop.set()
    t.join(2)
    lsock.close()


def test_tls_self_signed_certificate(tmp_path, self_signed) -> None:
    r, seconds = fetch_one(tmp_path, f"{self_signed}/x.jpg")
    assert (r[1], r[2]) == ("failed_transient", "tls_error"), r[3]
    assert "certificate" in r[3].lower()
    assert seconds <= DEADLINE + OVERHEAD


@pytest.fixture
def silent_tcp():
    """Accepts TCP connections and never says a word (a TLS handshake that never ends)."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.14", 0))
    lsock.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        lsock.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(lsock.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield lsock.getsockname()[1]
    stop.set()
    t.join(2)
    for s in held:
        s.close()
    lsock.close()


def test_tls_handshake_that_never_ends_is_cut_at_the_deadline(tmp_path, silent_tcp) -> None:
    r, seconds = fetch_one(tmp_path, f"https://127.0.0.14:{silent_tcp}/x.jpg",
                           connect_timeout=4, read_timeout=4)
    assert (r[1], r[2]) == ("failed_transient", "timeout"), r[3]
    assert seconds <= DEADLINE + OVERHEAD, f"held the worker {seconds:.1f}s"


# --------------------------------------------------------------------------- 429 and 503


def _no_request_during_cooldowns(srv: HostileServer, status: int,
                                 seconds: float) -> list[tuple[float, str]]:
    """Requests that began while the host was cooling down after a 429/503 answer: more
    than IN_FLIGHT after such an answer left the server and before ``seconds`` had passed
    since. Requests already in flight are legitimate; see IN_FLIGHT."""
    log = srv.stats()["log"]
    ends = [t for t, _target, code in list(srv.ends) if code == status]
    assert ends, f"no {status} answer was sent"
    bad = []
    for t_end in ends:
        for t, _m, target in log:
            if t_end + IN_FLIGHT < t < t_end + seconds:
                bad.append((round(t - t_end, 3), target))
    return bad


def test_429_storm_with_retry_after_cools_the_host_down(tmp_path) -> None:
    with HostileServer("127.0.0.15") as srv:
        srv.storm = 3  # the host's first 3 requests get 429 Retry-After: 2
        urls = [srv.url(f"/storm/s{i}.jpg?retry_after=2&w=64&h=64") for i in range(6)]
        db = make_db(tmp_path, urls)
        t0 = time.monotonic()
        run_download(config(tmp_path, db, wait_for_retries=10))  # linger for the cooldown
        seconds = time.monotonic() - t0
        log = srv.stats()["log"]
        bad = _no_request_during_cooldowns(srv, 429, 2.0)
        limited = {target.split("?")[0] for _t, target, code in list(srv.ends) if code == 429}
    assert not bad, f"requests reached the host during its cooldown: {bad}"
    got = rows(db)
    for (gid, status, etype, detail, http_status, _fp, _a), url in zip(got, urls, strict=True):
        path = url.split(str(srv.port), 1)[1].split("?")[0]
        if path in limited:
            assert (status, etype, http_status) == ("failed_transient", "rate_limited", 429), \
                detail
        else:
            assert status == "success", (gid, detail)
    assert sum(r[1] == "success" for r in got) == 3
    assert len(log) == 6  # every image asked exactly once: a 429 is not retried at once
    assert q(db, "SELECT cooldown_reason FROM hosts") == [("HTTP 429 Retry-After",)]
    # each wave of 429s costs one 2 s cooldown (two in flight together make one wave)
    assert 2.0 <= seconds <= 2.0 * len(limited) + DEADLINE + OVERHEAD


def test_429_storm_without_retry_after_stops_the_host_for_a_minute(tmp_path) -> None:
    with HostileServer("127.0.0.16") as srv:
        srv.storm = 10**6  # every request, for as long as it lasts
        urls = [srv.url(f"/storm/n{i}.jpg?w=64&h=64") for i in range(5)]
        db = make_db(tmp_path, urls)
        cfg = config(tmp_path, db, threads=1, per_host_concurrency=1)
        t_wall = time.time()
        t0 = time.monotonic()
        run_download(cfg)
        first_run = time.monotonic() - t0
        n_first = len(srv.stats()["log"])
        bad = _no_request_during_cooldowns(srv, 429, 60.0)
        # a new run (new lock directory: the cooldown comes back from the hosts table)
        run_download(replace(cfg, lock_dir=tmp_path / "locks2"))
        n_second = len(srv.stats()["log"])
    assert not bad, f"requests reached the host during its cooldown: {bad}"
    assert n_first == 1 and n_second == 1  # one 429, then nothing for the whole minute
    assert first_run <= DEADLINE + OVERHEAD
    got = rows(db)
    assert (got[0][1], got[0][2]) == ("failed_transient", "rate_limited")
    assert [(r[1], r[6]) for r in got[1:]] == [("pending", 0)] * 4  # deferred, no attempt
    ((until, reason),) = q(db, "SELECT cooldown_until, cooldown_reason FROM hosts")
    assert reason == "HTTP 429" and 58 <= until - t_wall <= 62


def test_503_flapping_is_transient_then_saved(tmp_path) -> None:
    with HostileServer("127.0.0.17") as srv:
        # every image's first request gets 503, the next one the image
        urls = [srv.url(f"/flaky/f{i}.jpg?fail=1&code=503&w=64&h=64") for i in range(6)]
        db = make_db(tmp_path, urls)
        t0 = time.monotonic()
        run_download(config(tmp_path, db))
        seconds = time.monotonic() - t0
        first = rows(db)
        execute(db, "UPDATE images SET next_attempt_at = 0 WHERE status = 'failed_transient'")
        run_download(config(tmp_path, db))
        second = rows(db)
    assert [(r[1], r[2], r[4]) for r in first] == \
        [("failed_transient", "server_error", 503)] * 6
    assert seconds <= DEADLINE + OVERHEAD
    assert [(r[1], r[6]) for r in second] == [("success", 2)] * 6
    # a 503 without Retry-After is an ordinary server error: no cooldown
    assert q(db, "SELECT cooldown_until FROM hosts") == [(None,)]


def test_503_with_retry_after_cools_the_host_down(tmp_path) -> None:
    with HostileServer("127.0.0.18") as srv:
        urls = [srv.url(f"/flaky/r{i}.jpg?fail=1&code=503&retry_after=1&w=64&h=64")
                for i in range(3)]
        db = make_db(tmp_path, urls)
        run_download(config(tmp_path, db, threads=1, per_host_concurrency=1,
                            wait_for_retries=10))
        bad = _no_request_during_cooldowns(srv, 503, 1.0)
        n = len(srv.stats()["log"])
    assert not bad, f"requests reached the host during its cooldown: {bad}"
    assert n == 3
    assert [(r[1], r[2]) for r in rows(db)] == [("failed_transient", "server_error")] * 3
    assert q(db, "SELECT cooldown_reason FROM hosts") == [("HTTP 503 Retry-After",)]
