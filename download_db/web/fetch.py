"""HTTP only: GET one URL under timeouts, a total deadline and a size cap; classify failures."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .. import __version__
from ..states import is_transient
from . import sniff
from .politeness import DEFAULT_COOLDOWN, parse_retry_after
from .proxies import EnvSession


@dataclass(frozen=True)
class Limits:
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    deadline: float = 120.0  # whole request, headers and body
    max_bytes: int = 256 << 20
    max_redirects: int = 5
    user_agent: str = f"gbif-download-db/{__version__}"


@dataclass
class Response:
    url: str  # after redirects
    status: int
    content_type: str
    body: bytes
    iiif_json: bool = False  # a IIIF manifest / info.json where an image was expected
    requested: str = ""  # the URL asked for (before redirects)


class FetchError(Exception):
    """A failed fetch: error_type (taxonomy), detail, and what it says about the host.

    host_failure: True when the host misbehaved (timeouts, resets, 5xx), False
    when it answered properly (404, an HTML page), None when it says nothing.
    cooldown: seconds the whole host should be left alone (429/503 Retry-After).
    network: the request never reached a server (name resolution, connection
    refused or unreachable, the proxy): across many hosts at once, our network.
    """

    def __init__(self, error_type: str, detail: str, *, http_status: int | None = None,
                 host_failure: bool | None = None, cooldown: float | None = None,
                 retry_after_given: bool = False, network: bool = False) -> None:
        super().__init__(f"{error_type}: {detail}")
        self.network = network
        self.retry_after_given = retry_after_given
        self.error_type = error_type
        self.detail = detail
        self.http_status = http_status
        self.host_failure = host_failure
        self.cooldown = cooldown

    @property
    def transient(self) -> bool:
        return is_transient(self.error_type)


# --- the deadline watchdog ---------------------------------------------------------
# Socket timeouts bound each recv(), not the whole response: a server sending a
# byte a second never trips them. Connections register their socket before
# reading a response; a watchdog shuts it down when the request's deadline
# passes, which unblocks the reading thread at once.

_local = threading.local()
_watch_lock = threading.Lock()
_watched: dict[int, tuple[socket.socket, float]] = {}
_watchdog_started = False


def _register(sock: socket.socket | None) -> None:
    deadline = getattr(_local, "deadline", None)
    if sock is not None and deadline is not None:
        with _watch_lock:
            _watched[threading.get_ident()] = (sock, deadline)


def _unregister() -> None:
    with _watch_lock:
        _watched.pop(threading.get_ident(), None)


def _watchdog() -> None:
    while True:
        time.sleep(0.2)
        now = time.monotonic()
        with _watch_lock:
            expired = [(k, s) for k, (s, d) in _watched.items() if d <= now]
            for k, _ in expired:
                _watched.pop(k, None)
        for _, s in expired:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def abort_all() -> None:
    """End every request in flight now (a stop signal): the watchdog shuts
    their sockets on its next tick."""
    with _watch_lock:
        for k, (s, _) in list(_watched.items()):
            _watched[k] = (s, 0.0)


def _ensure_watchdog() -> None:
    global _watchdog_started
    with _watch_lock:
        if not _watchdog_started:
            threading.Thread(target=_watchdog, name="deadline-watchdog", daemon=True).start()
            _watchdog_started = True


def _left(timeout):
    """The socket timeout for connecting, capped by what is left of the deadline: the
    watchdog only sees a socket once the request is sent, so a TLS handshake (or a
    proxy's CONNECT answer) that never comes is bounded here instead."""
    deadline = getattr(_local, "deadline", None)
    if deadline is None or not isinstance(timeout, (int, float)):
        return timeout
    return max(min(timeout, deadline - time.monotonic()), 0.01)


class _Deadlined:
    """Connection mix-in: connect within what is left of the deadline, and arm the
    watchdog on the socket once the request is sent."""

    def _new_conn(self) -> socket.socket:
        self.timeout = _left(self.timeout)  # type: ignore[has-type]
        return super()._new_conn()  # type: ignore[misc]

    def getresponse(self, *a, **kw):
        _register(self.sock)  # type: ignore[attr-defined]
        return super().getresponse(*a, **kw)  # type: ignore[misc]


class _Conn(_Deadlined, urllib3.connection.HTTPConnection):
    pass


class _TLSConn(_Deadlined, urllib3.connection.HTTPSConnection):
    pass


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Conn


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConn


_POOLS = {"http": _Pool, "https": _TLSPool}


class _Adapter(HTTPAdapter):
    def init_poolmanager(self, *a, **kw) -> None:
        super().init_poolmanager(*a, **kw)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **kw):  # type: ignore[override]
        # through a proxy too, connections are ours: the deadline covers them
        manager = super().proxy_manager_for(proxy, **kw)
        manager.pool_classes_by_scheme = _POOLS
        return manager


def new_session(limits: Limits, pool_size: int = 4, *, use_env: bool = True) -> requests.Session:
    """One session for all worker threads: keep-alive connections pooled per host,
    at most ``pool_size`` per host (a thread waits for a free one), so idle
    connections stay within the politeness limit too. No automatic retries (we
    classify and retry ourselves); TLS verification on.

    use_env: honour the environment as curl, pip and requests do (http_proxy,
    https_proxy, all_proxy, no_proxy in either case; REQUESTS_CA_BUNDLE); False
    (--no-proxy) ignores it all."""
    _ensure_watchdog()
    s = EnvSession(use_env)
    adapter = _Adapter(pool_connections=256, pool_maxsize=pool_size, pool_block=True,
                       max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.max_redirects = limits.max_redirects
    s.headers.update({"User-Agent": limits.user_agent, "Accept-Encoding": "identity"})
    return s


def get(session: requests.Session, url: str, limits: Limits, *,
        accept: str = "image/*, */*;q=0.5", want_text: bool = False) -> Response:
    """GET url; return a 200 Response with the whole body, or raise FetchError.

    Bodies that are HTML/text/JSON/XML (by Content-Type or by content) raise
    invalid_content_type unless ``want_text`` (manifests and info.json).
    """
    start = time.monotonic()
    _local.deadline = start + limits.deadline
    try:
        try:
            r = session.get(url, stream=True, allow_redirects=True, headers={"Accept": accept},
                            timeout=(limits.connect_timeout, limits.read_timeout))
        except requests.exceptions.RequestException as e:
            raise _classify_exception(e, start, limits) from None
        try:
            return _read(r, url, start, limits, want_text)
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
            raise _classify_exception(e, start, limits) from None
        finally:
            r.close()
    finally:
        _local.deadline = None
        _unregister()


def _read(r: requests.Response, url: str, start: float, limits: Limits,
          want_text: bool) -> Response:
    ctype = r.headers.get("Content-Type", "")
    status = r.status_code
    if status != 200:
        raise _status_error(r, status)
    length = r.headers.get("Content-Length")
    expected = int(length) if length and length.isdigit() else None
    if expected is not None and expected > limits.max_bytes:
        raise FetchError("too_large", f"Content-Length {expected:,} B is above the "
                         f"{limits.max_bytes:,} B cap", http_status=status, host_failure=False)
    text_type = sniff.content_type_class(ctype) == "text"
    cap = limits.max_bytes
    chunks: list[bytes] = []
    got = 0
    for chunk in r.iter_content(chunk_size=256 * 1024):
        if not chunks and text_type and not want_text:
            # magic bytes beat a wrong Content-Type: a JPEG sent as text/html is a JPEG
            text_type = sniff.image_format(chunk[:64]) is None
            if text_type:
                cap = min(cap, 256 * 1024)  # enough of a page to show what it says
        chunks.append(chunk)
        got += len(chunk)
        if time.monotonic() - start > limits.deadline:
            raise FetchError("timeout",
                             f"deadline of {limits.deadline:.0f}s passed after {got:,} B",
                             http_status=status, host_failure=True)
        if got > cap:
            if text_type and not want_text:
                break  # enough of the page to show what it says
            raise FetchError("too_large", f"body exceeds the {limits.max_bytes:,} B cap",
                             http_status=status, host_failure=False)
    body = b"".join(chunks)
    if expected is not None and got < expected and not (text_type and not want_text):
        raise FetchError("truncated", f"got {got:,} of {expected:,} B", http_status=status,
                         host_failure=True)
    if not body:
        raise FetchError("empty_response", "200 with an empty body", http_status=status,
                         host_failure=True)
    if not want_text and _is_iiif_json(body):
        return Response(r.url, status, ctype, body, iiif_json=True, requested=url)
    if not want_text and (text_type or sniff.looks_like_text(body[:4096])):
        label = ctype.split(";")[0].strip() or "no content-type"
        why = label if text_type else f"non-image body, {label}"
        raise FetchError("invalid_content_type", f"[{why}] {sniff.visible_text(body)}",
                         http_status=status, host_failure=False)
    return Response(r.url, status, ctype, body, requested=url)


def _is_iiif_json(body: bytes) -> bool:
    head = body[:8192].lstrip()
    return head[:1] == b"{" and b"iiif.io/api/" in head


def _status_error(r: requests.Response, status: int) -> FetchError:
    retry = parse_retry_after(r.headers.get("Retry-After"))
    if status == 429:
        return FetchError("rate_limited", f"HTTP 429, Retry-After {r.headers.get('Retry-After')}",
                          http_status=status, host_failure=None,
                          cooldown=retry if retry is not None else DEFAULT_COOLDOWN,
                          retry_after_given=retry is not None)
    if status == 408:
        return FetchError("timeout", "HTTP 408", http_status=status, host_failure=True)
    if status == 407:  # the proxy wants credentials: ours to fix, not the publisher's
        return FetchError("proxy_error", "HTTP 407 Proxy Authentication Required",
                          http_status=status, host_failure=None, network=True)
    if status >= 500:
        cooldown = retry if (status == 503 and retry is not None) else None
        return FetchError("server_error", f"HTTP {status}", http_status=status, host_failure=True,
                          cooldown=cooldown, retry_after_given=cooldown is not None)
    detail = f"HTTP {status}"
    try:
        snippet = sniff.visible_text(r.raw.read(16 * 1024, decode_content=True) or b"", 300)
        if snippet:
            detail += f": {snippet}"
    except (OSError, urllib3.exceptions.HTTPError):
        pass
    return FetchError(f"http_{status}", detail, http_status=status, host_failure=False)


def _classify_exception(e: BaseException, start: float, limits: Limits) -> FetchError:
    elapsed = time.monotonic() - start
    msg = str(e)[:300]
    if "NameResolutionError" in msg or "Name or service not known" in msg \
            or "Temporary failure in name resolution" in msg:
        # however long the resolver took: the name did not resolve
        return FetchError("dns_error", msg, host_failure=True, network=True)
    if elapsed >= limits.deadline - 0.05:
        return FetchError("timeout", f"deadline of {limits.deadline:.0f}s passed",
                          host_failure=True)
    if isinstance(e, requests.exceptions.TooManyRedirects):
        return FetchError("too_many_redirects", msg, host_failure=False)
    if isinstance(e, (requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema,
                      requests.exceptions.InvalidURL, requests.exceptions.InvalidHeader)):
        return FetchError("bad_redirect", msg, host_failure=False)
    if isinstance(e, requests.exceptions.ProxyError):
        # the proxy is down, refused us or could not reach the host: our state
        return FetchError("proxy_error", msg, host_failure=None, network=True)
    if isinstance(e, requests.exceptions.SSLError):
        return FetchError("tls_error", msg, host_failure=True)
    if isinstance(e, (requests.exceptions.Timeout, socket.timeout)) or "timed out" in msg.lower():
        # requests reports a read timeout while streaming the body as ConnectionError
        return FetchError("timeout", msg, host_failure=True)
    if isinstance(e, requests.exceptions.ChunkedEncodingError) or "IncompleteRead" in msg:
        return FetchError("truncated", msg, host_failure=True)
    # no server was reached: refused, unreachable (not a reset mid-request)
    unreached = "Failed to establish a new connection" in msg or "NewConnectionError" in msg
    return FetchError("connection_broken", msg, host_failure=True, network=unreached)


def answers(session: requests.Session, url: str, timeout: float = 5.0) -> bool:
    """Does a server answer at url at all (any status, even a TLS refusal)? The offline
    probe: False only when nothing was reached (name, route, proxy, or no answer in time)."""
    try:
        session.head(url, timeout=(timeout, timeout), allow_redirects=False).close()
        return True
    except requests.exceptions.SSLError:
        return True
    except requests.exceptions.RequestException:
        return False
