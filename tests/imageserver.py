"""A misbehaving image server for tests: real images plus every failure a downloader meets.

Self-contained (stdlib + Pillow + numpy), loopback only.  Each :class:`ImageServer` is a
threaded HTTP/1.1 server (keep-alive works) on its own port; bind several to 127.0.0.2,
127.0.0.3, ... to get separate "hosts"::

    with ImageServer("127.0.0.2") as srv:
        requests.get(srv.url("/img/a.jpg")).content          # a 1500x2000 JPEG
        srv.stats()["by_path"]["/img/a.jpg"]                  # -> 1

Routes (``{name}`` is any token; image routes serve the same bytes for the same name and
size; ``?w=&h=`` override the default 1500x2000 size, one of them alone keeps 3:4):

======================================  ==================================================
``/img/{name}.jpg``                     JPEG; ``?exif_orientation=6`` embeds EXIF 0x0112
``/png/ /tif/ /gif/ /webp/{name}.ext``  the picture as PNG (RGBA, transparent band)/TIFF/...
``/tiny/{name}.jpg``                    a 1x1 JPEG placeholder
``/bomb/{name}.png``                    valid PNG declaring 30000x30000 (~0.9 MB on the wire)
``/corrupt/{name}.jpg``                 FF D8 FF E0 + random bytes
``/status/{code}``                      that status, small HTML body (``?retry_after=``)
``/429``, ``/503``                      that status; ``?retry_after=S|date`` -> Retry-After
``/flaky/{name}.jpg?fail=N&code=C``     first N requests for the name answer C, then the JPEG
``/slow/{name}.jpg?delay=S``            sleeps S seconds (default 1) first
``/stall/{name}.jpg``                   headers (real Content-Length), then silence
``/trickle/{name}.jpg?bps=B``           body at B bytes per second (default 1)
``/trunc/{name}.jpg``                   half the body, then FIN
``/reset/{name}.jpg``                   10 KB of the body, then TCP RST
``/html/{name}``                        soft-error page (``?with=<script>`` variant)
``/text/ /json/ /xml/{name}``           small non-image bodies
``/disguised/{name}.jpg``               image/jpeg header, HTML body
``/wrongct/ /octet/ /noct/{name}.jpg``  JPEG as text/html / octet-stream / no Content-Type
``/empty/{name}.jpg``                   image/jpeg, Content-Length: 0
``/redirect/{n}/{name}.jpg``            302 chain of n+1 hops ending at ``/img/{name}.jpg``
``/loop/ /badredirect/ /offsite/``      302 to itself / to ftp:// / to ``?to=`` URL
``/huge/{name}.bin?mb=N&length=1|0``    SOI + N MiB of zeros, with or without Content-Length
``/gzipbomb/{name}.jpg``                ``Content-Encoding: gzip`` inflating to 1 GiB zeros
``/iiif/{2|3}/{id}/info.json``          IIIF Image API info.json of a 3000x4000 image
``/iiif/{2|3}/{id}/full/{size}/0/...``  rendered derivative; 403 above ``maxw`` (query or
                                        :attr:`ImageServer.iiif_max_width`);
                                        :attr:`ImageServer.iiif_images` sets an id's size,
                                        level (0: listed sizes only, others 404) and
                                        2.1-style upscaling of !w,h boxes
``/photos/{id}/{size}.jpg``             iNaturalist-style renditions: original 2048 px long
                                        edge, large 1024, medium 500, small 240, thumb 100
                                        (3:4); ``ImageServer.gone_renditions`` fail
``/manifest/v{2|3}/{id}.json``          IIIF Presentation manifest (``?canvases=N``; v2
                                        ``?images=BASE``: its image service there;
                                        ``?others=BASE``: canvases after the first there;
                                        ``?fail=N&code=C``: the first N requests answer C,
                                        503 unless given), also
                                        ``/manifest/v{2|3}/{id}/manifest``
``/manifest/bad.json``, ``/empty.json`` invalid JSON / a v3 manifest without canvases
``/v1/image/cache/occurrence/{id}/``    GBIF's image cache: ``media/{md5}`` of an identifier
``media/{md5}``                         registered with :meth:`ImageServer.cache_media` is a
                                        real photo (tests/data/images) fitted into 1200x1200
                                        at quality 85, as Thumbor serves it; else 404
                                        (:attr:`ImageServer.gbif_cache_delay` s first)
``/__stats``, ``/__reset``              stats as JSON / reset them (not counted in stats)
anything else                           404 text/html
======================================  ==================================================
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import http.server
import io
import json
import random
import re
import select
import socket
import socketserver
import ssl
import struct
import threading
import time
import traceback
import zlib
from collections import deque
from email.utils import formatdate
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["ImageServer", "servers"]

DEFAULT_W, DEFAULT_H = 1500, 2000
IIIF_W, IIIF_H = 3000, 4000
MAX_SIDE = 12_000  # refuse to render anything bigger (the bomb is not rendered)
JPEG_QUALITY = 85
BOMB_SIDE = 30_000
GZIP_BOMB_BYTES = 1 << 30
MIB = 1 << 20
# long edge of each /photos/ rendition (iNaturalist's names and sizes)
PHOTO_SIZES = {"original": 2048, "large": 1024, "medium": 500, "small": 240, "thumb": 100}
_ZEROS = bytes(MIB)

# --------------------------------------------------------------------------------------
# Deterministic content
# --------------------------------------------------------------------------------------


def _seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()[:8], "big")


def _render(name: str, w: int, h: int, noise: int) -> Image.Image:
    """A herbarium-sheet-like picture drawn in relative coordinates, so the same name gives
    the same picture at every size: paper gradient, stem, leaves, label, colour checker."""
    rnd = random.Random(_seed(name))
    sw, sh = max(2, w // 16), max(2, h // 16)
    c0 = np.array([rnd.randrange(200, 256) for _ in range(3)], np.float32)
    c1 = np.array([rnd.randrange(120, 220) for _ in range(3)], np.float32)
    a = rnd.uniform(0.2, 0.8)
    t = (
        a * np.linspace(0, 1, sw, dtype=np.float32)[None, :]
        + (1 - a) * np.linspace(0, 1, sh, dtype=np.float32)[:, None]
    )[..., None]
    small = (c0 * (1 - t) + c1 * t).astype(np.uint8)
    img = Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BILINEAR)
    d = ImageDraw.Draw(img)

    def xy(fx: float, fy: float) -> tuple[float, float]:
        return fx * w, fy * h

    top_x, bottom_x = rnd.uniform(0.35, 0.65), rnd.uniform(0.35, 0.65)
    d.line([xy(bottom_x, 0.9), xy(top_x, 0.1)], fill=(70, 60, 30), width=max(1, w // 150))
    for _ in range(rnd.randrange(8, 16)):
        fy = rnd.uniform(0.12, 0.8)
        fx = bottom_x + (top_x - bottom_x) * (0.9 - fy) / 0.8  # on the stem
        lw, lh = rnd.uniform(0.08, 0.2), rnd.uniform(0.03, 0.07)
        x0 = fx if rnd.random() < 0.5 else fx - lw
        green = (rnd.randrange(20, 90), rnd.randrange(80, 160), rnd.randrange(20, 80))
        d.ellipse([xy(x0, fy), xy(x0 + lw, fy + lh)], fill=green, outline=(30, 50, 20))
    d.rectangle([xy(0.6, 0.82), xy(0.95, 0.96)], fill=(250, 250, 245), outline=(0, 0, 0))
    for i in range(4):
        fy = 0.84 + i * 0.03
        d.rectangle([xy(0.62, fy), xy(0.62 + rnd.uniform(0.15, 0.3), fy + 0.012)], fill=(20,) * 3)
    checker = [(200, 30, 30), (30, 160, 30), (30, 30, 200), (230, 220, 40), (0, 0, 0), (255,) * 3]
    for i, col in enumerate(checker):
        d.rectangle([xy(0.04 + i * 0.05, 0.03), xy(0.08 + i * 0.05, 0.06)], fill=col)
    if noise:  # paper texture; makes JPEG sizes realistic (a few hundred KB at 1500x2000)
        rng = np.random.default_rng(_seed(name))
        arr = np.asarray(img, dtype=np.int16)
        arr += rng.integers(-noise, noise + 1, size=(h, w, 1), dtype=np.int16)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return img


@lru_cache(maxsize=256)
def image_bytes(name: str, w: int = DEFAULT_W, h: int = DEFAULT_H, fmt: str = "jpeg",
                orientation: int | None = None) -> bytes:
    """Encoded image for ``name`` at ``w`` x ``h`` (cached; deterministic)."""
    buf = io.BytesIO()
    if fmt == "jpeg":
        img = _render(name, w, h, noise=6)
        kw: dict = {"quality": JPEG_QUALITY}
        if orientation is not None:
            exif = Image.Exif()
            exif[0x0112] = orientation
            kw["exif"] = exif.tobytes()
        img.save(buf, "JPEG", **kw)
    elif fmt == "png":
        img = _render(name, w, h, noise=0).convert("RGBA")
        alpha = Image.new("L", (w, h), 255)
        ImageDraw.Draw(alpha).rectangle([0, int(h * 0.4), w, int(h * 0.6)], fill=0)
        img.putalpha(alpha)
        img.save(buf, "PNG")
    elif fmt == "tiff":
        _render(name, w, h, noise=0).save(buf, "TIFF", compression="tiff_lzw")
    elif fmt == "gif":
        _render(name, w, h, noise=0).save(buf, "GIF")
    elif fmt == "webp":
        _render(name, w, h, noise=0).save(buf, "WEBP", quality=80)
    else:  # pragma: no cover - programming error
        raise ValueError(fmt)
    return buf.getvalue()


CACHE_PHOTOS = sorted((Path(__file__).parent / "data" / "images").glob("*.jpg"))
GBIF_CACHE_MAX = 1200  # GBIF's cache serves at most 1200x1200 px, JPEG quality <= 85


@lru_cache(maxsize=8)
def gbif_cache_copy(k: int) -> bytes:
    """Real photo k fitted into 1200x1200 at quality 85: what GBIF's cache serves."""
    with Image.open(CACHE_PHOTOS[k]) as im:
        im = im.convert("RGB")
        im.thumbnail((GBIF_CACHE_MAX, GBIF_CACHE_MAX))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


@lru_cache(maxsize=1)
def tiny_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 200, 200)).save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _deflate_zeros(n: int) -> bytes:
    """Raw deflate of ``n`` zero bytes without compressing them all: a 1 MiB block ending in
    a full flush compresses identically every time, so it is repeated, then a fresh final
    stream carries the remainder."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(_ZEROS) + c.flush(zlib.Z_FULL_FLUSH)
    full, rem = divmod(n, MIB)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    return block * full + tail.compress(bytes(rem)) + tail.flush()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@lru_cache(maxsize=1)
def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A valid 8-bit greyscale PNG of ``side`` x ``side`` black pixels (900 Mpx by default)."""
    raw = side * (side + 1)  # a filter byte (0) per row, all zero as well
    adler = ((raw % 65521) << 16) | 1  # adler32 of `raw` zero bytes
    stream = b"\x78\xda" + _deflate_zeros(raw) + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = b"".join(
        _png_chunk(b"IDAT", stream[i : i + 256 * 1024]) for i in range(0, len(stream), 256 * 1024)
    )
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + idat + _png_chunk(b"IEND", b"")


@lru_cache(maxsize=1)
def gzip_bomb(size: int = GZIP_BOMB_BYTES) -> bytes:
    """A gzip member inflating to ``size`` zero bytes (~1 MB for 1 GiB)."""
    crc = 0
    for _ in range(size // MIB):
        crc = zlib.crc32(_ZEROS, crc)
    crc = zlib.crc32(bytes(size % MIB), crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + _deflate_zeros(size) + struct.pack("<II", crc, size & 0xFFFFFFFF)


def corrupt_jpeg(name: str, n: int = 50_000) -> bytes:
    return b"\xff\xd8\xff\xe0" + random.Random(_seed(name)).randbytes(n)


def _html_error(code: int) -> bytes:
    return f"<html><body><h1>Error {code}</h1></body></html>".encode()


SOFT_ERROR_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Image not available</title>
<style>
  body {{ font-family: Helvetica, Arial, sans-serif; background: #f5f5f0; color: #222; }}
  .notice {{ margin: 4em auto; max-width: 40em; border: 1px solid #c33; padding: 1em; }}
</style>
<script>
  if (window.location.hash === "#debug") {{ alert('x'); }}
</script>
</head>
<body>
<div class="header"><a href="/">Herbarium Digital Collections</a></div>
<div class="notice">
<p>The requested specimen image is not available. Please contact the herbarium.</p>{extra}
</div>
</body>
</html>
"""

DISGUISED_PAGE = (
    b"<!DOCTYPE html><html><head><title>Error</title></head>"
    b"<body><p>Image not found</p></body></html>"
)

# --------------------------------------------------------------------------------------
# IIIF
# --------------------------------------------------------------------------------------

_IIIF_SIZE = re.compile(r"(\^)?(?:(full|max)|pct:(\d+(?:\.\d+)?)|(!)?(\d*),(\d*))")


class _HTTPError(Exception):
    def __init__(self, code: int, msg: str = "") -> None:
        super().__init__(msg)
        self.code = code


def iiif_size(spec: str, full_w: int = IIIF_W, full_h: int = IIIF_H,
              max_w: int | None = None, upscale: bool = False) -> tuple[int, int]:
    """(w, h) of an IIIF size parameter (v2 and v3 syntax); raises _HTTPError(400|403).
    upscale: act as if every size had ``^`` (what 2.1 servers may do)."""
    m = _IIIF_SIZE.fullmatch(spec)
    if not m:
        raise _HTTPError(400, f"bad size {spec!r}")
    up, keyword, pct, bang, sw, sh = m.groups()
    up = up or upscale
    if (pct and float(pct) <= 0) or sw and int(sw) <= 0 or sh and int(sh) <= 0:
        raise _HTTPError(400, f"bad size {spec!r}")
    if keyword == "max":
        scale = min(1.0, max_w / full_w) if max_w else 1.0
        if up and max_w:
            scale = max_w / full_w
        w, h = full_w * scale, full_h * scale
    elif keyword == "full":
        w, h = full_w, full_h
    elif pct is not None:
        w, h = full_w * float(pct) / 100, full_h * float(pct) / 100
    else:
        if not sw and not sh or bang and not (sw and sh):
            raise _HTTPError(400, f"bad size {spec!r}")
        if bang:
            scale = min(int(sw) / full_w, int(sh) / full_h)
            if not up:
                scale = min(scale, 1.0)
            w, h = full_w * scale, full_h * scale
        elif sw and sh:
            w, h = int(sw), int(sh)
        elif sw:
            w, h = int(sw), full_h * int(sw) / full_w
        else:
            w, h = full_w * int(sh) / full_h, int(sh)
    w, h = max(1, round(w)), max(1, round(h))
    if (w > full_w or h > full_h) and not up:
        raise _HTTPError(400, "upscaling needs the ^ prefix")
    if w > MAX_SIDE or h > MAX_SIDE:
        raise _HTTPError(400, "size too large")
    if max_w is not None and w > max_w:
        raise _HTTPError(403, f"width {w} above maxWidth {max_w}")
    return w, h


# --------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() does its own bounded wait for handlers
    allow_reuse_address = True
    request_queue_size = 128
    app: ImageServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call socket.getfqdn() (a reverse DNS lookup)
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request, client_address) -> None:  # type: ignore[override]
        self.app._conn_opened(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:  # type: ignore[override]
        try:
            super().shutdown_request(request)
        finally:
            self.app._conn_closed(request)

    def handle_error(self, request, client_address) -> None:  # keep test output clean
        self.app.errors.append(traceback.format_exc())


class _Server6(_Server):
    address_family = socket.AF_INET6


def _qint(q: dict[str, str], key: str, default: int, lo: int = 0, hi: int = 1 << 40) -> int:
    try:
        v = int(q.get(key, default))
    except ValueError:
        raise _HTTPError(400, f"{key} must be an integer") from None
    if not lo <= v <= hi:
        raise _HTTPError(400, f"{key} out of range")
    return v


def _qfloat(q: dict[str, str], key: str, default: float, lo: float = 0.0) -> float:
    try:
        v = float(q.get(key, default))
    except ValueError:
        raise _HTTPError(400, f"{key} must be a number") from None
    if not v >= lo:
        raise _HTTPError(400, f"{key} out of range")
    return v


_N = r"(?P<name>[^/]+)"
_J = r"\.(?:jpe?g|JPE?G)"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ImageServer/1.0"
    timeout = 120  # an idle keep-alive connection is dropped eventually anyway
    disable_nagle_algorithm = True  # no 40 ms Nagle/delayed-ACK stalls on keep-alive
    server: _Server

    # routes: (regex on the raw path, method name); first fullmatch wins
    ROUTES: list[tuple[re.Pattern[str], str]] = [
        (re.compile(p), m)
        for p, m in [
            (rf"/img/{_N}{_J}", "r_img"),
            (rf"/png/{_N}\.png", "r_png"),
            (rf"/tif/{_N}\.tiff?", "r_tif"),
            (rf"/gif/{_N}\.gif", "r_gif"),
            (rf"/webp/{_N}\.webp", "r_webp"),
            (rf"/tiny/{_N}{_J}", "r_tiny"),
            (rf"/bomb/{_N}\.png", "r_bomb"),
            (rf"/corrupt/{_N}{_J}", "r_corrupt"),
            (r"/status/(?P<code>\d{3})", "r_status"),
            (r"/(?P<code>429|503)", "r_status"),
            (rf"/flaky/{_N}{_J}", "r_flaky"),
            (rf"/slow/{_N}{_J}", "r_slow"),
            (rf"/stall/{_N}{_J}", "r_stall"),
            (rf"/trickle/{_N}{_J}", "r_trickle"),
            (rf"/trunc/{_N}{_J}", "r_trunc"),
            (rf"/reset/{_N}{_J}", "r_reset"),
            (rf"/html/{_N}", "r_html"),
            (rf"/(?P<kind>text|json|xml)/{_N}", "r_small"),
            (rf"/disguised/{_N}{_J}", "r_disguised"),
            (rf"/(?P<kind>wrongct|octet|noct)/{_N}{_J}", "r_ctype"),
            (rf"/empty/{_N}{_J}", "r_empty"),
            (rf"/redirect/(?P<n>\d+)/{_N}{_J}", "r_redirect"),
            (rf"/loop/{_N}{_J}", "r_loop"),
            (rf"/badredirect/{_N}{_J}", "r_badredirect"),
            (rf"/offsite/{_N}{_J}", "r_offsite"),
            (rf"/huge/{_N}\.bin", "r_huge"),
            (rf"/gzipbomb/{_N}{_J}", "r_gzipbomb"),
            (r"/iiif/(?P<v>[23])/(?P<ident>[^/]+)/info\.json", "r_iiif_info"),
            (
                r"/iiif/(?P<v>[23])/(?P<ident>[^/]+)/(?P<region>[^/]+)/(?P<size>[^/]+)"
                r"/(?P<rotation>[^/]+)/(?P<quality>[^/.]+)\.(?P<fmt>[^/.]+)",
                "r_iiif_image",
            ),
            (r"/photos/(?P<pid>\d+)/(?P<size>[a-z]+)\.(?P<ext>jpe?g|png)", "r_photo"),
            (r"/manifest/bad\.json", "r_manifest_bad"),
            (r"/manifest/empty\.json", "r_manifest_empty"),
            (r"/manifest/v(?P<v>[23])/(?P<ident>[^/]+?)(?:\.json|/manifest)", "r_manifest"),
            (r"/v1/image/cache/occurrence/(?P<gid>\d+)/media/(?P<md5>[0-9a-f]{32})",
             "r_gbif_cache"),
            (r"/__stats", "r_stats"),
            (r"/__reset", "r_reset_stats"),
        ]
    ]

    # -- request loop ------------------------------------------------------------------

    def log_message(self, format: str, *args) -> None:  # silence request logging
        pass

    def handle(self) -> None:
        self.close_connection = True
        try:
            self.handle_one_request()
            while not self.close_connection and not self.server.app._stopping.is_set():
                self.handle_one_request()
        except OSError:  # client went away, reset, or the server stopped under us
            self.close_connection = True

    def handle_one_request(self) -> None:
        app = self.server.app
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except TimeoutError:
            self.close_connection = True
            return
        if not self.raw_requestline or app._stopping.is_set():
            self.close_connection = True
            return
        parts = self.raw_requestline.decode("iso-8859-1").split()
        target = parts[1] if len(parts) > 1 else ""
        self.in_flight = not target.startswith("/__")
        if self.in_flight:
            app._begin(parts[0] if parts else "", target)
        try:
            if len(self.raw_requestline) > 65536:
                self.requestline, self.request_version, self.command = "", "", ""
                self.send_error(414)
                return
            if not self.parse_request():
                return
            if self.command not in ("GET", "HEAD"):
                self.send_error(501, f"Unsupported method ({self.command!r})")
                return
            self._dispatch()
            if not self.wfile.closed:  # /reset/ closes it
                self.wfile.flush()
        finally:
            self.end_in_flight()

    def end_in_flight(self) -> None:
        """Stop counting this request as in flight (once)."""
        if self.in_flight:
            self.in_flight = False
            self.server.app._end()

    def _dispatch(self) -> None:
        self.head = self.command == "HEAD"
        self.headers_sent = False
        split = urlsplit(self.path)
        path = split.path
        self.query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        try:
            for rx, meth in self.ROUTES:
                m = rx.fullmatch(path)
                if m:
                    groups = {k: v for k, v in m.groupdict().items() if v is not None}
                    getattr(self, meth)(**groups)
                    return
            self.send_bytes(404, _html_error(404), "text/html")
        except _HTTPError as e:
            if self.headers_sent:
                raise
            self.send_bytes(e.code, _html_error(e.code), "text/html")
        except OSError:
            raise
        except Exception:  # noqa: BLE001 - report a server bug as 500, keep serving
            self.server.app.errors.append(traceback.format_exc())
            if self.headers_sent:
                self.close_connection = True
                return
            self.send_bytes(500, _html_error(500), "text/html")

    # -- response helpers --------------------------------------------------------------

    def send_head(self, code: int, ctype: str | None, length: int | None,
                  headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(code)
        if ctype is not None:
            self.send_header("Content-Type", ctype)
        if length is not None:
            self.send_header("Content-Length", str(length))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.headers_sent = True

    def send_bytes(self, code: int, body: bytes, ctype: str | None,
                   headers: tuple[tuple[str, str], ...] = ()) -> None:
        no_body = code in (204, 304) or 100 <= code < 200
        self.send_head(code, ctype, None if no_body else len(body), headers)
        if not self.head and not no_body:
            # Out of flight before the last write: once it is sent the client may hold the
            # whole body and start its next request before this thread runs again.
            self.end_in_flight()
            self.wfile.write(body)

    def size(self) -> tuple[int, int]:
        q = self.query
        if "w" in q and "h" not in q:
            w = _qint(q, "w", DEFAULT_W, 1, MAX_SIDE)
            return w, max(1, round(w * 4 / 3))
        if "h" in q and "w" not in q:
            h = _qint(q, "h", DEFAULT_H, 1, MAX_SIDE)
            return max(1, round(h * 3 / 4)), h
        return _qint(q, "w", DEFAULT_W, 1, MAX_SIDE), _qint(q, "h", DEFAULT_H, 1, MAX_SIDE)

    def jpeg(self, name: str) -> bytes:
        return image_bytes(name, *self.size())

    def sleep(self, seconds: float) -> bool:
        """Sleep; False (and close the connection) if the server stops meanwhile."""
        if self.server.app._stopping.wait(seconds):
            self.close_connection = True
            return False
        return True

    def redirect(self, location: str, code: int = 302) -> None:
        location = location.replace("\r", "").replace("\n", "")
        body = f'<html><body><a href="{html.escape(location)}">moved</a></body></html>'
        self.send_bytes(code, body.encode(), "text/html", (("Location", location),))

    def retry_after(self) -> tuple[tuple[str, str], ...]:
        v = self.query.get("retry_after")
        if v is None:
            return ()
        if v == "date":
            v = formatdate(time.time() + 5, usegmt=True)
        return (("Retry-After", re.sub(r"[\r\n]", "", v)),)

    # -- routes --------------------------------------------------------------------------

    def r_img(self, name: str) -> None:
        orientation = None
        if "exif_orientation" in self.query:
            orientation = _qint(self.query, "exif_orientation", 1, 1, 8)
        body = image_bytes(name, *self.size(), "jpeg", orientation)
        self.send_bytes(200, body, "image/jpeg")

    def r_png(self, name: str) -> None:
        self.send_bytes(200, image_bytes(name, *self.size(), "png"), "image/png")

    def r_tif(self, name: str) -> None:
        self.send_bytes(200, image_bytes(name, *self.size(), "tiff"), "image/tiff")

    def r_gif(self, name: str) -> None:
        self.send_bytes(200, image_bytes(name, *self.size(), "gif"), "image/gif")

    def r_webp(self, name: str) -> None:
        self.send_bytes(200, image_bytes(name, *self.size(), "webp"), "image/webp")

    def r_tiny(self, name: str) -> None:
        self.send_bytes(200, tiny_jpeg(), "image/jpeg")

    def r_bomb(self, name: str) -> None:
        self.send_bytes(200, bomb_png(), "image/png")

    def r_corrupt(self, name: str) -> None:
        self.send_bytes(200, corrupt_jpeg(name), "image/jpeg")

    def r_status(self, code: str) -> None:
        c = int(code)
        if not 200 <= c <= 599:
            raise _HTTPError(400, "status must be 200-599")
        self.send_bytes(c, _html_error(c), "text/html", self.retry_after())

    def r_flaky(self, name: str) -> None:
        fail = _qint(self.query, "fail", 1)
        code = _qint(self.query, "code", 500, 200, 599)
        if self.server.app._flaky_hit(name) <= fail:
            self.send_bytes(code, _html_error(code), "text/html", self.retry_after())
        else:
            self.send_bytes(200, self.jpeg(name), "image/jpeg")

    def r_slow(self, name: str) -> None:
        delay = _qfloat(self.query, "delay", 1.0)
        body = self.jpeg(name)
        if self.sleep(delay):
            self.send_bytes(200, body, "image/jpeg")

    def r_stall(self, name: str) -> None:
        body = self.jpeg(name)
        self.send_head(200, "image/jpeg", len(body))
        if self.head:
            return
        self.close_connection = True
        sock, stopping = self.connection, self.server.app._stopping
        while not stopping.is_set():
            readable, _, _ = select.select([sock], [], [], 0.05)
            if readable and not sock.recv(65536):
                return  # the client closed its end

    def r_trickle(self, name: str) -> None:
        bps = _qfloat(self.query, "bps", 1.0, lo=1e-3)
        body = self.jpeg(name)
        self.send_head(200, "image/jpeg", len(body))
        if self.head:
            return
        keep, self.close_connection = self.close_connection, True  # if interrupted
        interval = max(1.0 / bps, 0.02)
        step = max(1, round(bps * interval))
        for i in range(0, len(body), step):
            self.wfile.write(body[i : i + step])
            if i + step < len(body) and not self.sleep(interval):
                return
        self.close_connection = keep

    def r_trunc(self, name: str) -> None:
        body = self.jpeg(name)
        self.send_head(200, "image/jpeg", len(body))
        if not self.head:
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True  # finish() then closes the socket: FIN

    def r_reset(self, name: str) -> None:
        body = self.jpeg(name)
        self.send_head(200, "image/jpeg", len(body))
        if self.head:
            return
        self.wfile.write(body[: min(10 * 1024, len(body) - 1)])
        self.close_connection = True
        sock = self.connection
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # the socket only really closes once its makefile() wrappers are closed too
        self.rfile.close()
        self.wfile.close()
        sock.close()  # linger 0: the kernel sends RST instead of FIN

    def r_html(self, name: str) -> None:
        extra = ""
        if "with" in self.query:
            payload = self.query["with"]
            if payload in ("<script>", "script"):
                payload = "<script>alert(1)</script>"
            extra = f"\n<p>Requested: {html.escape(payload)}</p>"
        body = SOFT_ERROR_PAGE.format(extra=extra).encode()
        self.send_bytes(200, body, "text/html; charset=utf-8")

    def r_small(self, kind: str, name: str) -> None:
        body, ctype = {
            "text": (b"Image temporarily unavailable", "text/plain"),
            "json": (b'{"error": "not found"}', "application/json"),
            "xml": (b'<?xml version="1.0"?><error>missing</error>', "application/xml"),
        }[kind]
        self.send_bytes(200, body, ctype)

    def r_disguised(self, name: str) -> None:
        self.send_bytes(200, DISGUISED_PAGE, "image/jpeg")

    def r_ctype(self, kind: str, name: str) -> None:
        ctype = {"wrongct": "text/html", "octet": "application/octet-stream", "noct": None}[kind]
        self.send_bytes(200, self.jpeg(name), ctype)

    def r_empty(self, name: str) -> None:
        self.send_bytes(200, b"", "image/jpeg")

    def _qs(self) -> str:
        q = urlsplit(self.path).query
        return f"?{q}" if q else ""

    def r_redirect(self, n: str, name: str) -> None:
        hops = int(n)
        if hops > 0:
            self.redirect(f"/redirect/{hops - 1}/{name}.jpg{self._qs()}")
        else:
            self.redirect(f"/img/{name}.jpg{self._qs()}")

    def r_loop(self, name: str) -> None:
        self.redirect(self.path)

    def r_badredirect(self, name: str) -> None:
        self.redirect(f"ftp://127.0.0.1/{name}.jpg")

    def r_offsite(self, name: str) -> None:
        if not self.query.get("to"):
            raise _HTTPError(400, "?to= is required")
        self.redirect(self.query["to"])

    def r_huge(self, name: str) -> None:
        total = 2 + int(_qfloat(self.query, "mb", 10.0) * MIB)
        with_length = _qint(self.query, "length", 1, 0, 1) == 1
        if with_length:
            self.send_head(200, "image/jpeg", total)
        else:
            self.send_head(200, "image/jpeg", None, (("Connection", "close"),))
        if self.head:
            return
        keep, self.close_connection = self.close_connection, True  # if interrupted
        self.wfile.write(b"\xff\xd8")
        left, zeros = total - 2, memoryview(_ZEROS)
        while left > 0:
            if self.server.app._stopping.is_set():
                return
            n = min(left, MIB)
            self.wfile.write(zeros[:n])
            left -= n
        self.close_connection = keep or not with_length

    def r_gzipbomb(self, name: str) -> None:
        self.send_bytes(200, gzip_bomb(), "image/jpeg", (("Content-Encoding", "gzip"),))

    # IIIF ------------------------------------------------------------------------------

    def iiif_max_width(self, ident: str) -> int | None:
        limits = []
        if "maxw" in self.query:
            limits.append(_qint(self.query, "maxw", 0, 1, MAX_SIDE))
        server_limit = self.server.app.iiif_max_width.get(ident)
        if server_limit is not None:
            limits.append(int(server_limit))
        return min(limits) if limits else None

    def iiif_image(self, ident: str) -> tuple[int, int, int, bool]:
        """(width, height, level, upscales) of an id (ImageServer.iiif_images)."""
        spec = self.server.app.iiif_images.get(ident, {})
        w, h = spec.get("size", (IIIF_W, IIIF_H))
        return w, h, spec.get("level", 2), spec.get("upscale", False)

    def iiif_sizes(self, ident: str) -> list[tuple[int, int]]:
        full_w, full_h, _level, _up = self.iiif_image(ident)
        max_w = self.iiif_max_width(ident)
        return [(full_w >> k, full_h >> k) for k in range(4, -1, -1)
                if full_w >> k and (max_w is None or full_w >> k <= max_w)]

    def r_iiif_info(self, v: str, ident: str) -> None:
        app, max_w = self.server.app, self.iiif_max_width(ident)
        service = app.url(f"/iiif/{v}/{ident}")
        full_w, full_h, level, _up = self.iiif_image(ident)
        sizes = [{"width": w, "height": h} for w, h in self.iiif_sizes(ident)]
        tiles = [{"width": 512, "height": 512, "scaleFactors": [1, 2, 4, 8, 16]}]
        if v == "2":
            extra: dict = {
                "formats": ["jpg"],
                "qualities": ["default", "color"],
                "supports": ["sizeByW", "sizeByH", "sizeByWh", "sizeByPct", "sizeAboveFull"],
            }
            if level < 2:
                del extra["supports"]
            if max_w is not None:
                extra["maxWidth"] = max_w
            info: dict = {
                "@context": "http://iiif.io/api/image/2/context.json",
                "@id": service,
                "protocol": "http://iiif.io/api/image",
                "width": full_w,
                "height": full_h,
                "sizes": sizes,
                "tiles": tiles,
                "profile": [f"http://iiif.io/api/image/2/level{level}.json", extra],
            }
            ctype = "application/json"
        else:
            info = {
                "@context": "http://iiif.io/api/image/3/context.json",
                "id": service,
                "type": "ImageService3",
                "protocol": "http://iiif.io/api/image",
                "profile": f"level{level}",
                "width": full_w,
                "height": full_h,
                "sizes": sizes,
                "tiles": tiles,
            }
            if max_w is not None:
                info["maxWidth"] = max_w
            ctype = 'application/ld+json;profile="http://iiif.io/api/image/3/context.json"'
        body = json.dumps(info, indent=2).encode()
        self.send_bytes(200, body, ctype, (("Access-Control-Allow-Origin", "*"),))

    def r_iiif_image(self, v: str, ident: str, region: str, size: str,
                     rotation: str, quality: str, fmt: str) -> None:
        if region != "full":
            raise _HTTPError(400, "only region=full is supported")
        if rotation not in ("0", "0.0"):
            raise _HTTPError(400, "only rotation=0 is supported")
        if quality not in ("default", "color") or fmt != "jpg":
            raise _HTTPError(400, "only default|color .jpg is supported")
        full_w, full_h, level, upscale = self.iiif_image(ident)
        listed = {f"{w},{h}" if v == "3" else f"{w}," for w, h in self.iiif_sizes(ident)}
        if level == 0 and size not in listed | {"full", "max"}:
            raise _HTTPError(404, f"no file for size {size!r}")  # a static server
        w, h = iiif_size(size, full_w, full_h, self.iiif_max_width(ident), upscale)
        self.send_bytes(200, image_bytes(ident, w, h), "image/jpeg",
                        (("Access-Control-Allow-Origin", "*"),))

    def r_photo(self, pid: str, size: str, ext: str) -> None:
        edge = PHOTO_SIZES.get(size)
        if edge is None or size in self.server.app.gone_renditions:
            # S3 answers 403 for a key that is not there, unless listing is allowed
            raise _HTTPError(self.server.app.gone_renditions.get(size, 404),
                             f"no {size} rendition")
        fmt = "png" if ext == "png" else "jpeg"
        self.send_bytes(200, image_bytes(f"photo{pid}", edge * 3 // 4, edge, fmt),
                        f"image/{fmt}")

    # GBIF's image cache -----------------------------------------------------------------

    def r_gbif_cache(self, gid: str, md5: str) -> None:
        app = self.server.app
        if app.gbif_cache_delay and not self.sleep(app.gbif_cache_delay):
            return
        if (gid, md5) not in app.gbif_cached:
            raise _HTTPError(404, "not in the cache")
        self.send_bytes(200, gbif_cache_copy(int(md5, 16) % len(CACHE_PHOTOS)), "image/jpeg")

    # IIIF Presentation ----------------------------------------------------------------

    def _canvas_ids(self, ident: str) -> list[str]:
        n = _qint(self.query, "canvases", 1, 0, 500)
        return [ident if i == 1 else f"{ident}-{i}" for i in range(1, n + 1)]

    def _image_base(self, index: int, first: str) -> str:
        """Where canvas ``index`` (0-based) has its image service: ``?others=BASE``
        puts every canvas after the first on another server (another host)."""
        others = self.query.get("others")
        return (others if index and others else first).rstrip("/")

    def manifest_v2(self, ident: str, canvas_ids: list[str]) -> dict:
        u = self.server.app.url
        # ?images=http://host:port: the image service on another server (another host)
        images = self.query.get("images", self.server.app.base)

        canvases = []
        for i, cid in enumerate(canvas_ids):
            def iu(path: str, i: int = i) -> str:
                return self._image_base(i, images) + path
            canvas = u(f"/canvas/{cid}")
            canvases.append({
                "@id": canvas,
                "@type": "sc:Canvas",
                "label": f"Sheet {cid}",
                "width": IIIF_W,
                "height": IIIF_H,
                "images": [{
                    "@id": u(f"/annotation/{cid}"),
                    "@type": "oa:Annotation",
                    "motivation": "sc:painting",
                    "on": canvas,
                    "resource": {
                        "@id": iu(f"/iiif/2/{cid}/full/full/0/default.jpg"),
                        "@type": "dctypes:Image",
                        "format": "image/jpeg",
                        "width": IIIF_W,
                        "height": IIIF_H,
                        "service": {
                            "@context": "http://iiif.io/api/image/2/context.json",
                            "@id": iu(f"/iiif/2/{cid}"),
                            "profile": "http://iiif.io/api/image/2/level2.json",
                        },
                    },
                }],
            })
        return {
            "@context": "http://iiif.io/api/presentation/2/context.json",
            "@id": u(f"/manifest/v2/{ident}.json"),
            "@type": "sc:Manifest",
            "label": f"Specimen {ident}",
            "sequences": [{
                "@id": u(f"/sequence/{ident}"),
                "@type": "sc:Sequence",
                "canvases": canvases,
            }],
        }

    def manifest_v3(self, ident: str, canvas_ids: list[str]) -> dict:
        u = self.server.app.url
        items = []
        for i, cid in enumerate(canvas_ids):
            def iu(path: str, i: int = i) -> str:
                return self._image_base(i, self.server.app.base) + path
            canvas = u(f"/canvas/{cid}")
            items.append({
                "id": canvas,
                "type": "Canvas",
                "label": {"none": [f"Sheet {cid}"]},
                "width": IIIF_W,
                "height": IIIF_H,
                "items": [{
                    "id": u(f"/page/{cid}"),
                    "type": "AnnotationPage",
                    "items": [{
                        "id": u(f"/annotation/{cid}"),
                        "type": "Annotation",
                        "motivation": "painting",
                        "target": canvas,
                        "body": {
                            "id": iu(f"/iiif/3/{cid}/full/600,/0/default.jpg"),
                            "type": "Image",
                            "format": "image/jpeg",
                            "width": 600,
                            "height": 800,
                            "service": [{
                                "@id": iu(f"/iiif/2/{cid}"),
                                "@type": "ImageService2",
                                "profile": "http://iiif.io/api/image/2/level2.json",
                            }],
                        },
                    }],
                }],
            })
        return {
            "@context": "http://iiif.io/api/presentation/3/context.json",
            "id": u(f"/manifest/v3/{ident}.json"),
            "type": "Manifest",
            "label": {"en": [f"Specimen {ident}"]},
            "items": items,
        }

    def send_json(self, obj: object, ctype: str = "application/json") -> None:
        self.send_bytes(200, json.dumps(obj, indent=2).encode(), ctype)

    def r_manifest(self, v: str, ident: str) -> None:
        fail = _qint(self.query, "fail", 0)
        if fail and self.server.app._flaky_hit(f"manifest/{ident}") <= fail:
            code = _qint(self.query, "code", 503, 200, 599)
            self.send_bytes(code, _html_error(code), "text/html", self.retry_after())
        elif v == "2":
            self.send_json(self.manifest_v2(ident, self._canvas_ids(ident)))
        else:
            self.send_json(self.manifest_v3(ident, self._canvas_ids(ident)))

    def r_manifest_bad(self) -> None:
        body = b'{"@context": "http://iiif.io/api/presentation/3/context.json", "items": ['
        self.send_bytes(200, body, "application/json")

    def r_manifest_empty(self) -> None:
        self.send_json(self.manifest_v3("empty", []))

    # control ---------------------------------------------------------------------------

    def r_stats(self) -> None:
        self.send_json(self.server.app.stats())

    def r_reset_stats(self) -> None:
        self.server.app.reset_stats()
        self.send_json({"ok": True})


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


class ImageServer:
    """A threaded HTTP/1.1 test server on ``host`` (loopback) and ``port`` (0: a free one)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.host, self.port = host, port
        self.tls = tls  # a server context: serve HTTPS (e.g. a trustme test CA's cert)
        # per-IIIF-id maxWidth; sizes wider than this answer 403 (see also ?maxw=)
        self.iiif_max_width: dict[str, int] = {}
        # per-IIIF-id image: {"size": (w, h), "level": 0|1|2, "upscale": bool}; default
        # 3000x4000, level 2, no upscaling (see iiif_image)
        self.iiif_images: dict[str, dict] = {}
        # /photos/ rendition name -> the status it answers (an original without renditions)
        self.gone_renditions: dict[str, int] = {}
        # GBIF's image cache: the (gbifID, md5 of the identifier) pairs it has a copy of
        self.gbif_cached: set[tuple[str, str]] = set()
        self.gbif_cache_delay = 0.0  # seconds before each cache answer
        # tracebacks of server-side bugs and handler errors (normally empty)
        self.errors: list[str] = []
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._flaky: dict[str, int] = {}
        self.reset_stats()

    # lifecycle -------------------------------------------------------------------------

    def start(self) -> ImageServer:
        if self._httpd is not None:
            raise RuntimeError("already started")
        self._stopping.clear()
        cls = _Server6 if ":" in self.host else _Server
        httpd = cls((self.host, self.port), _Handler)
        httpd.app = self
        if self.tls is not None:  # the handshake happens in the handler thread
            httpd.socket = self.tls.wrap_socket(httpd.socket, server_side=True,
                                                do_handshake_on_connect=False)
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"ImageServer {self.host}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd = self._httpd
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()  # no more accepts; returns within one poll interval
        with self._lock:
            conns = list(self._conns)
        for s in conns:  # wake handlers blocked on stalled/trickling/keep-alive sockets
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            with self._lock:
                if not self._conns:
                    break
            time.sleep(0.01)
        self._httpd = self._thread = None

    def __enter__(self) -> ImageServer:
        return self if self._httpd is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._httpd else "stopped"
        return f"<ImageServer {self.host}:{self.port} {state}>"

    # addresses -------------------------------------------------------------------------

    @property
    def base(self) -> str:
        if self._httpd is None:
            raise RuntimeError("ImageServer not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base + (path if path.startswith("/") else "/" + path)

    # stats -----------------------------------------------------------------------------

    def stats(self) -> dict:
        """Counters since the last reset.  A request is in flight from its request line
        until its last write starts (a whole body in one write) or returns (a body written in
        parts), so a client holding a whole body is never still counted.  ``/__stats`` and
        ``/__reset`` are not counted."""
        with self._lock:
            return {
                "requests": self._requests,
                "by_path": dict(self._by_path),
                "max_concurrent": self._max_concurrent,
                "concurrent_now": self._concurrent,
                "log": list(self._log),
            }

    def hits(self, path: str) -> int:
        """Requests so far for ``path`` (without query)."""
        with self._lock:
            return self._by_path.get(path, 0)

    def reset_stats(self) -> None:
        """Zero the counters (requests in flight still count towards concurrency)."""
        with self._lock:
            self._requests = 0
            self._by_path: dict[str, int] = {}
            self._log: deque[tuple[float, str, str]] = deque(maxlen=100_000)
            self._concurrent = getattr(self, "_concurrent", 0)
            self._max_concurrent = self._concurrent

    def cache_media(self, gbif_id: int, identifier: str) -> str:
        """Let the cache route hold a copy of ``identifier`` (a media item of occurrence
        ``gbif_id``); returns its path on this server."""
        md5 = hashlib.md5(identifier.encode("utf-8")).hexdigest()
        self.gbif_cached.add((str(gbif_id), md5))
        return f"/v1/image/cache/occurrence/{gbif_id}/media/{md5}"

    def reset_flaky(self) -> None:
        """Forget how often each /flaky/ name was requested."""
        with self._lock:
            self._flaky.clear()

    # called by the handler -------------------------------------------------------------

    def _begin(self, method: str, target: str) -> None:
        with self._lock:
            self._requests += 1
            path = target.split("?", 1)[0]
            self._by_path[path] = self._by_path.get(path, 0) + 1
            self._log.append((time.monotonic(), method, target))
            self._concurrent += 1
            self._max_concurrent = max(self._max_concurrent, self._concurrent)

    def _end(self) -> None:
        with self._lock:
            self._concurrent -= 1

    def _flaky_hit(self, name: str) -> int:
        with self._lock:
            self._flaky[name] = self._flaky.get(name, 0) + 1
            return self._flaky[name]

    def _conn_opened(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.add(sock)

    def _conn_closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.discard(sock)


def servers(n: int, first: int = 2) -> list[ImageServer]:
    """Start ``n`` servers on 127.0.0.{first}..{first+n-1}, each on a free port."""
    started: list[ImageServer] = []
    try:
        for i in range(n):
            started.append(ImageServer(f"127.0.0.{first + i}").start())
    except BaseException:
        for s in started:
            s.stop()
        raise
    return started
