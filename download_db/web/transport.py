"""Pooled urllib3 connections per host and proxy, under a total deadline a watchdog enforces."""

from __future__ import annotations

import socket
import threading
import time

import urllib3
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import Timeout

from .proxies import EnvProxies

# --- the deadline watchdog ---------------------------------------------------------
# Socket timeouts bound each recv(), not the whole response: a server sending a
# byte a second never trips them. Connections register their socket before
# reading a response; a watchdog shuts it down when the request's deadline
# passes, which unblocks the reading thread at once.

_local = threading.local()
_watch_lock = threading.Lock()
_watched: dict[int, tuple[socket.socket, float]] = {}
_watchdog_started = False


def start_deadline(seconds: float) -> float:
    """Arm this thread's deadline, ``seconds`` from now; returns the start (monotonic)."""
    start = time.monotonic()
    _local.deadline = start + seconds
    return start


def end_deadline() -> None:
    _local.deadline = None
    with _watch_lock:
        _watched.pop(threading.get_ident(), None)


def _register(sock: socket.socket | None) -> None:
    deadline = getattr(_local, "deadline", None)
    if sock is not None and deadline is not None:
        with _watch_lock:
            _watched[threading.get_ident()] = (sock, deadline)


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


class Session:
    """Keep-alive connections for all worker threads: one pool per host (and per proxy),
    at most ``pool_size`` connections each (a thread waits for a free one), so idle
    connections stay within the politeness limit too. urllib3 directly: requests' own
    layers cost about as much CPU per image as the whole of urllib3 (measured with
    py-spy on the keep-original bench). No retries, no redirects here (fetch follows
    them itself); TLS verified against the environment's CA bundle or certifi's."""

    def __init__(self, headers: dict[str, str], pool_size: int, connect_timeout: float,
                 read_timeout: float, use_env: bool = True) -> None:
        _ensure_watchdog()
        self.headers = headers
        self.env = EnvProxies(use_env)
        self.timeout = Timeout(connect=connect_timeout, read=read_timeout)
        self._kw = {"num_pools": 256, "maxsize": pool_size, "block": True, "retries": False,
                    **self.env.tls}
        self._direct = self._manager(None)
        self._proxied: dict[str, urllib3.PoolManager] = {}
        self._lock = threading.Lock()

    def _manager(self, proxy: str | None) -> urllib3.PoolManager:
        if proxy is None:
            m = urllib3.PoolManager(**self._kw)
        elif proxy.lower().startswith("socks"):
            from urllib3.contrib.socks import SOCKSProxyManager  # needs PySocks, as in requests
            m = SOCKSProxyManager(proxy, **self._kw)
            return m  # its own SOCKS connection classes; the watchdog still ends the read
        else:
            m = urllib3.ProxyManager(proxy, proxy_headers=self.env.proxy_headers(proxy),
                                     **self._kw)
        # through a proxy too, connections are ours: the deadline covers them
        m.pool_classes_by_scheme = _POOLS
        return m

    def manager_for(self, url: str) -> urllib3.PoolManager:
        proxy = self.env.proxy_for(url)
        if proxy is None:
            return self._direct
        m = self._proxied.get(proxy)
        if m is None:
            with self._lock:
                m = self._proxied.get(proxy) or self._manager(proxy)
                self._proxied[proxy] = m
        return m

    def open(self, method: str, url: str, headers: dict[str, str] | None = None,
             timeout: Timeout | None = None) -> urllib3.BaseHTTPResponse:
        """One request, no redirects followed, the body left to read (release_conn after)."""
        return self.manager_for(url).urlopen(
            method, url, headers={**self.headers, **(headers or {})}, redirect=False,
            retries=False, preload_content=False, decode_content=False,
            timeout=timeout or self.timeout)

    def close(self) -> None:
        self._direct.clear()
        for m in list(self._proxied.values()):
            m.clear()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
