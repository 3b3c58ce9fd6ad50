"""HTTP only: GET one URL under timeouts, a total deadline and a size cap; classify failures."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, replace
from urllib.parse import urljoin

import urllib3
from requests.utils import requote_uri
from urllib3.util import Timeout

from .. import __version__
from ..states import is_transient
from . import sniff
from .politeness import DEFAULT_COOLDOWN, parse_retry_after
from .transport import Session, abort_all, end_deadline, start_deadline

__all__ = ["FetchError", "Limits", "Response", "Session", "abort_all", "answers", "get",
           "new_session"]


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


def new_session(limits: Limits, pool_size: int = 4, *, use_env: bool = True) -> Session:
    """One session for all worker threads: keep-alive connections pooled per host,
    at most ``pool_size`` per host (a thread waits for a free one), so idle
    connections stay within the politeness limit too. No automatic retries (we
    classify and retry ourselves); TLS verification on.

    use_env: honour the environment as curl, pip and requests do (http_proxy,
    https_proxy, all_proxy, no_proxy in either case; REQUESTS_CA_BUNDLE); False
    (--no-proxy) ignores it all."""
    return Session({"User-Agent": limits.user_agent, "Accept-Encoding": "identity"},
                   pool_size, limits.connect_timeout, limits.read_timeout, use_env)


def get(session: Session, url: str, limits: Limits, *,
        accept: str = "image/*, */*;q=0.5", want_text: bool = False) -> Response:
    """GET url; return a 200 Response with the whole body, or raise FetchError.

    Bodies that are HTML/text/JSON/XML (by Content-Type or by content) raise
    invalid_content_type unless ``want_text`` (manifests and info.json).
    """
    start = start_deadline(limits.deadline)
    try:
        try:
            r, final = _follow(session, url, limits, {"Accept": accept})
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            raise _classify_exception(e, start, limits) from None
        try:
            return replace(_read(r, final, start, limits, want_text), requested=url)
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            raise _classify_exception(e, start, limits, in_body=True) from None
        finally:
            _done(r)
    finally:
        end_deadline()


def _follow(session: Session, url: str, limits: Limits,
            headers: dict[str, str]) -> tuple[urllib3.BaseHTTPResponse, str]:
    """The first response that is not a redirect, and its URL. As browsers and requests
    do: a relative Location is resolved against the URL that sent it; at most
    ``max_redirects`` are followed; each hop goes through its own host's proxy."""
    url = requote_uri(url)  # spaces and the like percent-encoded, as requests did
    for _ in range(limits.max_redirects + 1):
        _check_url(url)
        r = session.open("GET", url, headers)
        location = r.headers.get("Location") if r.status in _REDIRECTS else None
        if location is None:
            return r, url
        _done(r, drain=True)
        url = requote_uri(urljoin(url, location.encode("latin1").decode("utf8", "replace")))
    raise _TooManyRedirects(f"Exceeded {limits.max_redirects} redirects.")


_REDIRECTS = frozenset((301, 302, 303, 307, 308))


class _TooManyRedirects(urllib3.exceptions.HTTPError):
    pass


class _BadURL(urllib3.exceptions.HTTPError):
    pass


def _check_url(url: str) -> None:
    scheme, _, rest = url.partition("://")
    if not rest:
        raise _BadURL(f"Invalid URL {url!r}: No scheme supplied.")
    if scheme.lower() not in ("http", "https"):
        raise _BadURL(f"No connection adapters were found for {url!r}")


def _done(r: urllib3.BaseHTTPResponse, drain: bool = False) -> None:
    """Give the connection back to its pool: as is when the body was read to the end (or
    a small one is drained), closed otherwise, so no unread bytes reach the next request."""
    try:
        if drain and (r.length_remaining or 0) <= 64 * 1024:
            r.drain_conn()
        elif not r.isclosed():
            r.close()
    except (urllib3.exceptions.HTTPError, OSError):
        r.close()
    r.release_conn()


def _read(r: urllib3.BaseHTTPResponse, url: str, start: float, limits: Limits,
          want_text: bool) -> Response:
    ctype = r.headers.get("Content-Type", "")
    status = r.status
    if status != 200:
        raise _status_error(r, status)
    length = r.headers.get("Content-Length")
    expected = int(length) if length and length.isdigit() else None
    if expected is not None and expected > limits.max_bytes:
        raise FetchError("too_large", f"Content-Length {expected:,} B is above the "
                         f"{limits.max_bytes:,} B cap", http_status=status, host_failure=False)
    text_type = sniff.content_type_class(ctype) == "text"
    if expected and not text_type and r.headers.get("Content-Encoding", "identity").strip() \
            in ("", "identity"):
        # the usual image: one read of the announced length (within the cap, checked
        # above), no chunk list and no join; a stall or trickle past the deadline is ended
        # by the watchdog, a short body raises IncompleteRead (truncated)
        body = r.read(decode_content=False)
        got = len(body)
        if time.monotonic() - start > limits.deadline:
            raise FetchError("timeout", f"deadline of {limits.deadline:.0f}s passed after "
                             f"{got:,} B", http_status=status, host_failure=True)
    else:
        body, got, text_type = _read_chunks(r, status, start, limits, text_type, want_text)
    if expected is not None and got < expected and not (text_type and not want_text):
        raise FetchError("truncated", f"got {got:,} of {expected:,} B", http_status=status,
                         host_failure=True)
    if not body:
        raise FetchError("empty_response", "200 with an empty body", http_status=status,
                         host_failure=True)
    if not want_text and _is_iiif_json(body):
        return Response(url, status, ctype, body, iiif_json=True)
    if not want_text and (text_type or sniff.looks_like_text(body[:4096])):
        label = ctype.split(";")[0].strip() or "no content-type"
        why = label if text_type else f"non-image body, {label}"
        raise FetchError("invalid_content_type", f"[{why}] {sniff.visible_text(body)}",
                         http_status=status, host_failure=False)
    return Response(url, status, ctype, body)


def _read_chunks(r: urllib3.BaseHTTPResponse, status: int, start: float, limits: Limits,
                 text_type: bool, want_text: bool) -> tuple[bytes, int, bool]:
    """The body in chunks, for what may be large, encoded or a page: (body, bytes, text)."""
    cap = limits.max_bytes
    chunks: list[bytes] = []
    got = 0
    while chunk := r.read(256 * 1024, decode_content=True):
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
    return b"".join(chunks), got, text_type


def _is_iiif_json(body: bytes) -> bool:
    head = body[:8192].lstrip()
    return head[:1] == b"{" and b"iiif.io/api/" in head


def _status_error(r: urllib3.BaseHTTPResponse, status: int) -> FetchError:
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
        snippet = sniff.visible_text(r.read(16 * 1024, decode_content=True) or b"", 300)
        if snippet:
            detail += f": {snippet}"
    except (OSError, urllib3.exceptions.HTTPError):
        pass
    return FetchError(f"http_{status}", detail, http_status=status, host_failure=False)


def _classify_exception(e: BaseException, start: float, limits: Limits,
                        in_body: bool = False) -> FetchError:
    elapsed = time.monotonic() - start
    msg = str(e)[:300]
    if "NameResolutionError" in msg or "Name or service not known" in msg \
            or "Temporary failure in name resolution" in msg:
        # however long the resolver took: the name did not resolve
        return FetchError("dns_error", msg, host_failure=True, network=True)
    if elapsed >= limits.deadline - 0.05:
        return FetchError("timeout", f"deadline of {limits.deadline:.0f}s passed",
                          host_failure=True)
    if isinstance(e, _TooManyRedirects):
        return FetchError("too_many_redirects", msg, host_failure=False)
    if isinstance(e, (_BadURL, urllib3.exceptions.LocationValueError, ValueError)):
        return FetchError("bad_redirect", msg, host_failure=False)
    if isinstance(e, urllib3.exceptions.ProxyError):
        # the proxy is down, refused us or could not reach the host: our state
        return FetchError("proxy_error", msg, host_failure=None, network=True)
    if isinstance(e, urllib3.exceptions.SSLError):
        return FetchError("tls_error", msg, host_failure=True)
    # NewConnectionError is a ConnectTimeoutError in urllib3 2, refused ones included
    if (isinstance(e, (urllib3.exceptions.TimeoutError, socket.timeout))
            and not isinstance(e, urllib3.exceptions.NewConnectionError)) \
            or "timed out" in msg.lower():
        return FetchError("timeout", msg, host_failure=True)
    # the body broke off (a reset, a short chunk) once the headers had come
    if "IncompleteRead" in msg or (in_body and isinstance(e, urllib3.exceptions.ProtocolError)):
        return FetchError("truncated", msg, host_failure=True)
    # no server was reached: refused, unreachable (not a reset mid-request)
    unreached = "Failed to establish a new connection" in msg or "NewConnectionError" in msg
    return FetchError("connection_broken", msg, host_failure=True, network=unreached)


def answers(session: Session, url: str, timeout: float = 5.0) -> bool:
    """Does a server answer at url at all (any status, even a TLS refusal)? The offline
    probe: False only when nothing was reached (name, route, proxy, or no answer in time)."""
    try:
        session.open("HEAD", url, timeout=Timeout(connect=timeout, read=timeout)).release_conn()
        return True
    except urllib3.exceptions.SSLError:
        return True
    except (urllib3.exceptions.HTTPError, OSError, ValueError):
        return False
