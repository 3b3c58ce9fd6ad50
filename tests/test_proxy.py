"""Proxies: http_proxy/https_proxy/no_proxy honoured through a real proxy (proxy.py) on loopback,
CONNECT to an HTTPS server with a test CA, a proxy that is down or refuses, --no-proxy."""

from __future__ import annotations

import io
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import trustme

from download_db.download.stage import run_download
from download_db.web import fetch, proxies
from download_db.web.fetch import FetchError, Limits
from tests.helpers import config, make_db, rows
from tests.imageserver import ImageServer, image_bytes
from tests.reliability._support import execute

LIMITS = Limits(connect_timeout=5.0, read_timeout=5.0, deadline=15.0, max_bytes=4 << 20,
                user_agent="gbif-download-db-tests/1 (tests@example.org)")
PROXY_HOST = "127.0.0.40"


def free_port(host: str) -> int:
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


@dataclass
class Proxy:
    url: str
    log: Path

    def seen(self, text: str) -> bool:
        """The proxy's access log names this request (proxy.py logs each one)."""
        end = time.monotonic() + 5
        while time.monotonic() < end:
            if text in self.log.read_text(errors="replace"):
                return True
            time.sleep(0.05)
        return False


def start_proxy(tmp: Path, *extra: str) -> Iterator[Proxy]:
    """A real forwarding proxy (proxy.py, from PyPI) on loopback; stopped at the end."""
    port = free_port(PROXY_HOST)
    log = tmp / f"proxy-{port}.log"
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "--hostname", PROXY_HOST,
                             "--port", str(port), "--num-workers", "1", "--num-acceptors", "1",
                             "--log-file", str(log), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((PROXY_HOST, port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > end:
                    pytest.fail(f"proxy.py did not start: {log.read_text(errors='replace')}")
                time.sleep(0.1)
        yield Proxy(f"http://{PROXY_HOST}:{port}", log)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory) -> Iterator[Proxy]:
    yield from start_proxy(tmp_path_factory.mktemp("proxy"))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def tls_server(ca) -> Iterator[ImageServer]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.42").configure_cert(ctx)
    with ImageServer("127.0.0.42", tls=ctx) as srv:
        yield srv


@pytest.fixture(scope="module")
def srv() -> Iterator[ImageServer]:
    with ImageServer("127.0.0.41") as s:
        yield s


def get(url: str, *, use_env: bool = True) -> fetch.Response:
    s = fetch.new_session(LIMITS, use_env=use_env)
    try:
        return fetch.get(s, url, LIMITS)
    finally:
        s.close()


def failure(url: str, **kw) -> FetchError:
    with pytest.raises(FetchError) as e:
        get(url, **kw)
    return e.value


def dead_proxy() -> str:
    return f"http://{PROXY_HOST}:{free_port(PROXY_HOST)}"


# --------------------------------------------------------------------------- what is shown


def test_the_proxy_shown_at_start_has_its_password_masked() -> None:
    env = {"HTTPS_PROXY": "http://up:per@proxy.example.org:3128",
           "https_proxy": "http://alice:s3cret@proxy.example.org:8080",
           "http_proxy": "proxy.example.org:3128", "no_proxy": ".example.org,10.0.0.0/8",
           "PATH": "/usr/bin"}
    line = proxies.describe_proxies(env)
    assert line == ("http via proxy.example.org:3128, https via "
                    "http://alice:***@proxy.example.org:8080 (no_proxy: .example.org,10.0.0.0/8)")
    assert "s3cret" not in line and "per@" not in line
    assert proxies.describe_proxies({"NO_PROXY": "x", "PATH": "/bin"}) is None
    assert proxies.describe_proxies({"ALL_PROXY": "socks5://u:p@h:1080"}) == \
        "all via socks5://u:***@h:1080"


# --------------------------------------------------------------------------- through the proxy


def test_plain_http_goes_through_the_proxy(monkeypatch, proxy, srv) -> None:
    monkeypatch.setenv("http_proxy", proxy.url)
    r = get(srv.url("/img/viaproxy.jpg"))
    assert r.body == image_bytes("viaproxy")
    assert proxy.seen(f"GET {srv.host}:{srv.port}/img/viaproxy.jpg")


def test_upper_case_variable_works_too(monkeypatch, proxy, srv) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    assert get(srv.url("/img/upper.jpg")).body == image_bytes("upper")
    assert proxy.seen(f"GET {srv.host}:{srv.port}/img/upper.jpg")


def test_https_is_tunnelled_with_connect_and_the_site_ca(monkeypatch, proxy, tls_server,
                                                         ca_file) -> None:
    monkeypatch.setenv("https_proxy", proxy.url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))  # a site CA, as on many clusters
    r = get(tls_server.url("/img/tunnel.jpg"))
    assert r.body == image_bytes("tunnel")
    assert proxy.seen(f"CONNECT {tls_server.host}:{tls_server.port}")


def test_no_proxy_exclusions_in_either_case(monkeypatch, srv) -> None:
    monkeypatch.setenv("http_proxy", dead_proxy())
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.setenv(name, f"example.org,{srv.host}")
        assert get(srv.url(f"/img/direct-{name}.jpg")).body == image_bytes(f"direct-{name}")


def test_no_proxy_flag_ignores_the_environment(monkeypatch, srv) -> None:
    monkeypatch.setenv("http_proxy", dead_proxy())
    assert get(srv.url("/img/flag.jpg"), use_env=False).body == image_bytes("flag")


# --------------------------------------------------------------------------- proxy trouble


def test_a_proxy_that_is_down_is_a_transient_proxy_error(monkeypatch, srv) -> None:
    monkeypatch.setenv("http_proxy", dead_proxy())
    e = failure(srv.url("/img/down.jpg"))
    assert (e.error_type, e.transient, e.network, e.host_failure) == \
        ("proxy_error", True, True, None), e.detail


def test_a_proxy_that_refuses_the_tunnel_is_a_proxy_error(monkeypatch, tmp_path, tls_server,
                                                          ca_file) -> None:
    gen = start_proxy(tmp_path, "--plugins", "proxy.plugin.FilterByUpstreamHostPlugin",
                      "--filtered-upstream-hosts", tls_server.host)
    refusing = next(gen)
    try:
        monkeypatch.setenv("https_proxy", refusing.url)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))
        e = failure(tls_server.url("/img/refused.jpg"))
    finally:
        gen.close()
    assert (e.error_type, e.transient, e.host_failure) == ("proxy_error", True, None), e.detail


def test_a_proxy_asking_for_credentials_is_a_proxy_error(monkeypatch, tmp_path, srv) -> None:
    gen = start_proxy(tmp_path, "--basic-auth", "alice:s3cret")
    guarded = next(gen)
    try:
        monkeypatch.setenv("http_proxy", guarded.url)
        e = failure(srv.url("/img/noauth.jpg"))
        host, port = guarded.url.split("//")[1].split(":")
        monkeypatch.setenv("http_proxy", f"http://alice:s3cret@{host}:{port}")
        assert get(srv.url("/img/auth.jpg")).body == image_bytes("auth")
    finally:
        gen.close()
    assert (e.error_type, e.http_status, e.transient) == ("proxy_error", 407, True), e.detail


# --------------------------------------------------------------------------- a whole run


def test_a_run_says_which_proxy_it_uses_and_a_dead_one_is_not_the_hosts_fault(
        monkeypatch, tmp_path, srv) -> None:
    proxy_url = dead_proxy()
    monkeypatch.setenv("http_proxy", proxy_url.replace("http://", "http://bob:hunter2@"))
    db = make_db(tmp_path, [srv.url("/img/run-a.jpg")])
    out = io.StringIO()
    run_download(config(tmp_path, db), out)
    text = out.getvalue()
    assert f"download: proxy: http via http://bob:***@{proxy_url[7:]}" in text
    assert "hunter2" not in text
    [(_gid, status, etype, _detail, _http, _fp, attempts)] = rows(db)
    assert (status, etype, attempts) == ("failed_transient", "proxy_error", 1)

    execute(db, "UPDATE images SET next_attempt_at = 0")  # due now, not after the backoff
    out = io.StringIO()
    run_download(replace(config(tmp_path, db), no_proxy=True), out)
    assert "download: direct connections (--no-proxy); ignoring the environment's proxies" \
        in out.getvalue()
    assert rows(db)[0][1] == "success"
