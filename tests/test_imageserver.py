"""The test image server itself: one focused test per route family (loopback only)."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
import struct
import threading
import time
import zlib
from email.utils import parsedate_to_datetime

import pytest
import requests
from imageserver import ImageServer, _HTTPError, iiif_size, image_bytes, servers
from PIL import Image

pytestmark = pytest.mark.timeout(60)

T = 10  # generous per-request timeout: nothing here may hang


@pytest.fixture(scope="module")
def pair():
    two = servers(2)  # 127.0.0.2 and 127.0.0.3
    yield two
    for s in two:
        s.stop()
    assert [s.errors for s in two] == [[], []]  # no handler crashed


@pytest.fixture
def srv(pair):
    return pair[0]


def get(srv: ImageServer, path: str, **kw) -> requests.Response:
    kw.setdefault("timeout", T)
    return requests.get(srv.url(path), **kw)


def settle(srv: ImageServer) -> dict:
    """Stats once no request is in flight: the server counts a request as finished only after
    its last write returns, which can be a moment after the client has the whole body."""
    deadline = time.monotonic() + T
    while srv.stats()["concurrent_now"] and time.monotonic() < deadline:
        time.sleep(0.005)
    return srv.stats()


def decode(body: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(body))
    im.load()
    return im


def raw_get(srv: ImageServer, path: str, timeout: float = T) -> socket.socket:
    c = socket.create_connection((srv.host, srv.port), timeout=timeout)
    c.sendall(f"GET {path} HTTP/1.1\r\nHost: {srv.host}\r\n\r\n".encode())
    return c


def read_head(c: socket.socket) -> tuple[bytes, bytes]:
    """(header block, body bytes already received) of a raw response."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = c.recv(65536)
        assert chunk, "connection closed before the headers ended"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return int(v)
    raise AssertionError("no Content-Length")


# -- images ------------------------------------------------------------------------------------


def test_img_default_size_deterministic_and_overrides(srv):
    r = get(srv, "/img/sheet1.jpg")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "image/jpeg"
    assert int(r.headers["Content-Length"]) == len(r.content)
    assert 100_000 < len(r.content) < 1_000_000  # "a few hundred KB"
    im = decode(r.content)
    assert (im.format, im.size, im.mode) == ("JPEG", (1500, 2000), "RGB")
    assert get(srv, "/img/sheet1.jpg").content == r.content  # same name, same bytes
    assert get(srv, "/img/sheet2.jpg").content != r.content
    assert decode(get(srv, "/img/sheet1.jpg?w=300&h=200").content).size == (300, 200)
    assert decode(get(srv, "/img/sheet1.jpg?w=300").content).size == (300, 400)
    assert get(srv, "/img/sheet1.jpg?w=0").status_code == 400
    h = requests.head(srv.url("/img/sheet1.jpg"), timeout=T)
    assert h.status_code == 200 and h.content == b""
    assert int(h.headers["Content-Length"]) == len(r.content)


def test_img_exif_orientation(srv):
    im = decode(get(srv, "/img/rot.jpg?w=90&exif_orientation=6").content)
    assert im.getexif().get(0x0112) == 6
    assert 0x0112 not in decode(get(srv, "/img/rot.jpg?w=90").content).getexif()


@pytest.mark.parametrize(
    ("route", "ctype", "fmt"),
    [
        ("/png/p.png", "image/png", "PNG"),
        ("/tif/p.tif", "image/tiff", "TIFF"),
        ("/gif/p.gif", "image/gif", "GIF"),
        ("/webp/p.webp", "image/webp", "WEBP"),
    ],
)
def test_other_formats(srv, route, ctype, fmt):
    r = get(srv, route + "?w=120&h=160")
    assert r.status_code == 200 and r.headers["Content-Type"] == ctype
    im = decode(r.content)
    assert (im.format, im.size) == (fmt, (120, 160))
    if fmt == "PNG":
        assert im.mode == "RGBA"
        lo, hi = im.getchannel("A").getextrema()
        assert (lo, hi) == (0, 255)  # a transparent region and an opaque one
        assert im.getpixel((60, 80))[3] == 0
    assert get(srv, route + "?w=120&h=160").content == r.content


def test_tiny_placeholder(srv):
    r = get(srv, "/tiny/t.jpg")
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
    assert decode(r.content).size == (1, 1)


def test_bomb_png(srv, monkeypatch):
    r = get(srv, "/bomb/b.png")
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"
    body = r.content
    assert len(body) < 5_000_000
    # Pillow's stock limit (download_db.files.images replaces it with its own per-image check)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(body))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    im = Image.open(io.BytesIO(body))  # the header parses; do NOT load it
    assert (im.format, im.size, im.mode) == ("PNG", (30000, 30000), "L")
    # every chunk's CRC is right and the pixel stream starts inflating to zeros
    pos, idat = 8, b""
    while pos < len(body):
        (n,) = struct.unpack(">I", body[pos : pos + 4])
        kind, data = body[pos + 4 : pos + 8], body[pos + 8 : pos + 8 + n]
        assert struct.unpack(">I", body[pos + 8 + n : pos + 12 + n])[0] == zlib.crc32(kind + data)
        idat += data if kind == b"IDAT" else b""
        pos += 12 + n
    assert kind == b"IEND"
    out = zlib.decompressobj().decompress(idat, 16 << 20)
    assert len(out) == 16 << 20 and out.count(0) == len(out)


def test_corrupt_jpeg(srv):
    r = get(srv, "/corrupt/c.jpg")
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
    assert r.content[:4] == b"\xff\xd8\xff\xe0" and len(r.content) > 1000
    assert get(srv, "/corrupt/c.jpg").content == r.content
    with pytest.raises((OSError, SyntaxError, ValueError)):
        decode(r.content)


# -- status codes and retries ------------------------------------------------------------------


@pytest.mark.parametrize("code", [400, 401, 403, 404, 408, 410, 413, 500, 502, 503, 504])
def test_status_codes(srv, code):
    r = get(srv, f"/status/{code}")
    assert r.status_code == code
    assert r.headers["Content-Type"] == "text/html"
    assert r.content == f"<html><body><h1>Error {code}</h1></body></html>".encode()
    assert int(r.headers["Content-Length"]) == len(r.content)


@pytest.mark.parametrize("code", [429, 503])
def test_retry_after(srv, code):
    r = get(srv, f"/{code}")
    assert r.status_code == code and "Retry-After" not in r.headers
    assert get(srv, f"/{code}?retry_after=7").headers["Retry-After"] == "7"
    when = parsedate_to_datetime(get(srv, f"/{code}?retry_after=date").headers["Retry-After"])
    assert 2 <= when.timestamp() - time.time() <= 7


def test_flaky(pair):
    a, b = pair
    for _ in range(2):
        assert get(a, "/flaky/f1.jpg?fail=2&code=503&w=50").status_code == 503
    ok = get(a, "/flaky/f1.jpg?fail=2&code=503&w=50")
    assert ok.status_code == 200 and decode(ok.content).size == (50, 67)
    assert get(a, "/flaky/f2.jpg?fail=1&w=50").status_code == 500  # per name, default 500
    assert get(a, "/flaky/f2.jpg?fail=1&w=50").status_code == 200
    assert get(b, "/flaky/f1.jpg?fail=1&w=50").status_code == 500  # per server
    a.reset_flaky()
    assert get(a, "/flaky/f2.jpg?fail=1&w=50").status_code == 500


# -- slow, stalled and broken transfers --------------------------------------------------------


def test_slow(srv):
    t0 = time.monotonic()
    r = get(srv, "/slow/s.jpg?delay=0.3&w=40")
    assert time.monotonic() - t0 >= 0.3
    assert r.status_code == 200 and decode(r.content).size == (40, 53)


def test_stall(srv):
    full = len(image_bytes("st", 1500, 2000))
    c = raw_get(srv, "/stall/st.jpg", timeout=0.5)
    try:
        head, rest = read_head(c)
        assert head.startswith(b"HTTP/1.1 200") and b"image/jpeg" in head
        assert content_length(head) == full and rest == b""
        with pytest.raises(TimeoutError):
            c.recv(1)
    finally:
        c.close()
    with requests.Session() as session:  # closing it releases the stalled connection
        with pytest.raises((requests.ConnectionError, requests.Timeout)):
            session.get(srv.url("/stall/st.jpg"), timeout=(T, 0.5))
    assert settle(srv)["concurrent_now"] == 0  # the server noticed the client went away


def test_trickle(srv):
    whole = get(srv, "/img/tr.jpg?w=40").content
    r = get(srv, "/trickle/tr.jpg?w=40&bps=20", stream=True)
    try:
        assert int(r.headers["Content-Length"]) == len(whole)
        t0 = time.monotonic()
        first = b"".join(r.raw.read(1) for _ in range(8))
        assert time.monotonic() - t0 >= 0.25  # 8 bytes at 20 B/s
        assert first == whole[:8]
    finally:
        r.close()
    assert get(srv, "/trickle/tr.jpg?w=40&bps=1000000").content == whole


def test_trunc(srv):
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get(srv, "/trunc/tc.jpg")
    c = raw_get(srv, "/trunc/tc.jpg")
    try:
        head, body = read_head(c)
        while chunk := c.recv(65536):  # ends with a clean FIN
            body += chunk
    finally:
        c.close()
    n = content_length(head)
    assert n == len(image_bytes("tc", 1500, 2000))
    assert len(body) == n // 2


def test_reset(srv):
    with pytest.raises((requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        get(srv, "/reset/rs.jpg")
    c = raw_get(srv, "/reset/rs.jpg")
    got = b""
    try:
        with pytest.raises(ConnectionResetError):  # RST, not FIN
            while chunk := c.recv(65536):
                got += chunk
    finally:
        c.close()
    assert len(got) <= 10 * 1024 + 1024  # headers + at most 10 KB of body


# -- non-image bodies --------------------------------------------------------------------------


def test_html_soft_error(srv):
    r = get(srv, "/html/h1")
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/html; charset=utf-8"
    t = r.text
    assert "<title>Image not available</title>" in t
    assert "<style>" in t and "<script>" in t and "alert('x')" in t
    text = "The requested specimen image is not available. Please contact the herbarium."
    assert text in t
    v = get(srv, "/html/h1", params={"with": "<script>"}).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in v
    assert "<script>alert(1)" not in v


@pytest.mark.parametrize(
    ("kind", "ctype", "body"),
    [
        ("text", "text/plain", b"Image temporarily unavailable"),
        ("json", "application/json", b'{"error": "not found"}'),
        ("xml", "application/xml", b'<?xml version="1.0"?><error>missing</error>'),
    ],
)
def test_small_bodies(srv, kind, ctype, body):
    r = get(srv, f"/{kind}/x1")
    assert (r.status_code, r.headers["Content-Type"], r.content) == (200, ctype, body)


def test_content_type_lies(srv):
    r = get(srv, "/disguised/d.jpg")
    assert r.headers["Content-Type"] == "image/jpeg"
    assert r.content.startswith(b"<!DOCTYPE html><html>") and r.content.endswith(b"</html>")
    jpeg = get(srv, "/img/d.jpg?w=40").content
    for route, ctype in [("wrongct", "text/html"), ("octet", "application/octet-stream")]:
        r = get(srv, f"/{route}/d.jpg?w=40")
        assert r.headers["Content-Type"] == ctype and r.content == jpeg
    r = get(srv, "/noct/d.jpg?w=40")
    assert "Content-Type" not in r.headers and r.content == jpeg
    r = get(srv, "/empty/d.jpg")
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
    assert r.headers["Content-Length"] == "0" and r.content == b""


# -- redirects ---------------------------------------------------------------------------------


def test_redirects(pair):
    a, b = pair
    r = get(a, "/redirect/2/rd.jpg?w=40")
    assert r.status_code == 200 and len(r.history) == 3
    assert [h.status_code for h in r.history] == [302] * 3
    assert r.url == a.url("/img/rd.jpg?w=40") and decode(r.content).size == (40, 53)
    first = get(a, "/redirect/2/rd.jpg", allow_redirects=False)
    assert first.status_code == 302 and first.headers["Location"] == "/redirect/1/rd.jpg"
    assert get(a, "/redirect/0/rd.jpg", allow_redirects=False).headers["Location"] == (
        "/img/rd.jpg"
    )
    loop = get(a, "/loop/l.jpg", allow_redirects=False)
    assert loop.status_code == 302 and loop.headers["Location"] == "/loop/l.jpg"
    with pytest.raises(requests.TooManyRedirects):
        get(a, "/loop/l.jpg")
    bad = get(a, "/badredirect/br.jpg", allow_redirects=False)
    assert bad.status_code == 302 and bad.headers["Location"] == "ftp://127.0.0.1/br.jpg"
    with pytest.raises(requests.exceptions.InvalidSchema):
        get(a, "/badredirect/br.jpg")
    before = b.hits("/img/x.jpg")
    r = get(a, "/offsite/o.jpg", params={"to": b.url("/img/x.jpg?w=40")})
    assert r.status_code == 200 and r.url == b.url("/img/x.jpg?w=40")
    assert r.history[0].headers["Location"] == b.url("/img/x.jpg?w=40")
    assert b.hits("/img/x.jpg") == before + 1


# -- huge bodies and gzip bombs ----------------------------------------------------------------


def test_huge_with_and_without_length(srv):
    r = get(srv, "/huge/h.bin?mb=2&length=1")
    assert r.headers["Content-Type"] == "image/jpeg"
    assert int(r.headers["Content-Length"]) == 2 + 2 * 2**20 == len(r.content)
    assert r.content[:2] == b"\xff\xd8" and r.content[2:].count(0) == 2 * 2**20
    r = get(srv, "/huge/h.bin?mb=2&length=0", stream=True)
    try:
        assert "Content-Length" not in r.headers and r.headers["Connection"] == "close"
        body = b"".join(r.iter_content(65536))
    finally:
        r.close()
    assert len(body) == 2 + 2 * 2**20 and body[:2] == b"\xff\xd8"


def test_gzipbomb(srv):
    r = get(srv, "/gzipbomb/g.jpg", stream=True)
    try:
        assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
        assert r.headers["Content-Encoding"] == "gzip"
        n = int(r.headers["Content-Length"])
        assert 500_000 < n < 2_000_000
        raw = r.raw.read(2**20, decode_content=False)
    finally:
        r.close()
    assert raw[:2] == b"\x1f\x8b"
    d = zlib.decompressobj(31)
    out = d.decompress(raw, 64 << 20)  # bounded: the whole thing is 1 GiB
    assert len(out) == 64 << 20 and out.count(0) == len(out)


# -- IIIF --------------------------------------------------------------------------------------


@pytest.mark.parametrize("v", ["2", "3"])
def test_iiif_info(srv, v):
    info = get(srv, f"/iiif/{v}/ii/info.json").json()
    assert (info["width"], info["height"]) == (3000, 4000)
    assert info["@context"] == f"http://iiif.io/api/image/{v}/context.json"
    limited = get(srv, f"/iiif/{v}/ii/info.json?maxw=1000").json()
    if v == "2":
        assert info["@id"] == srv.url("/iiif/2/ii")
        assert info["protocol"] == "http://iiif.io/api/image"
        assert info["profile"][0] == "http://iiif.io/api/image/2/level2.json"
        assert all("maxWidth" not in p for p in info["profile"][1:])
        assert {"width": 3000, "height": 4000} in info["sizes"]
        assert limited["profile"][1]["maxWidth"] == 1000
    else:
        assert info["id"] == srv.url("/iiif/3/ii")
        assert (info["type"], info["profile"]) == ("ImageService3", "level2")
        assert "maxWidth" not in info
        assert limited["maxWidth"] == 1000
    assert all(s["width"] <= 1000 for s in limited["sizes"])


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("full", (3000, 4000)),
        ("max", (3000, 4000)),
        ("600,", (600, 800)),
        ("^600,", (600, 800)),
        (",400", (300, 400)),
        ("300,300", (300, 300)),
        ("!500,500", (375, 500)),
        ("!5000,5000", (3000, 4000)),
        ("^!6000,6000", (4500, 6000)),
        ("pct:10", (300, 400)),
        ("^pct:150", (4500, 6000)),
        ("^4000,", (4000, 5333)),
    ],
)
def test_iiif_size_parsing(spec, expected):
    assert iiif_size(spec) == expected


@pytest.mark.parametrize("spec", ["4000,", "pct:150", ",", "!500,", "0,", "abc", "3001,10"])
def test_iiif_size_rejects(spec):
    with pytest.raises(_HTTPError) as e:
        iiif_size(spec)
    assert e.value.code == 400


def test_iiif_image_requests(srv):
    srv.reset_stats()
    for v in ("2", "3"):
        r = get(srv, f"/iiif/{v}/ix/full/600,/0/default.jpg")
        assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"
        assert decode(r.content).size == (600, 800)
        # same picture for the same id as /img/
        assert r.content == get(srv, "/img/ix.jpg?w=600&h=800").content
    assert decode(get(srv, "/iiif/2/ix/full/!200,200/0/color.jpg").content).size == (150, 200)
    assert decode(get(srv, "/iiif/3/ix/full/pct:5/0/default.jpg").content).size == (150, 200)
    for bad in [
        "/iiif/2/ix/0,0,10,10/100,/0/default.jpg",
        "/iiif/2/ix/full/100,/90/default.jpg",
        "/iiif/2/ix/full/100,/0/gray.jpg",
        "/iiif/2/ix/full/100,/0/default.png",
        "/iiif/3/ix/full/4000,/0/default.jpg",
    ]:
        assert get(srv, bad).status_code == 400, bad
    # maxWidth from the query ...
    assert get(srv, "/iiif/2/ix/full/1500,/0/default.jpg?maxw=1000").status_code == 403
    assert get(srv, "/iiif/2/ix/full/full/0/default.jpg?maxw=1000").status_code == 403
    m = get(srv, "/iiif/3/ix/full/max/0/default.jpg?maxw=200")
    assert m.status_code == 200 and decode(m.content).size == (200, 267)
    # ... or per id on the server
    srv.iiif_max_width["lim"] = 300
    try:
        assert get(srv, "/iiif/2/lim/full/301,/0/default.jpg").status_code == 403
        assert get(srv, "/iiif/2/lim/full/300,/0/default.jpg").status_code == 200
        assert get(srv, "/iiif/2/lim/info.json").json()["profile"][1]["maxWidth"] == 300
    finally:
        del srv.iiif_max_width["lim"]
    assert get(srv, "/iiif/2/lim/full/301,/0/default.jpg").status_code == 200
    by_path = srv.stats()["by_path"]
    assert by_path["/iiif/2/lim/full/301,/0/default.jpg"] == 2
    assert by_path["/iiif/2/lim/full/300,/0/default.jpg"] == 1


def test_iiif_full_size(srv):
    r = get(srv, "/iiif/3/big/full/max/0/default.jpg")
    assert r.status_code == 200 and decode(r.content).size == (3000, 4000)


def test_manifest_v2(srv):
    m = get(srv, "/manifest/v2/mv.json?canvases=3").json()
    assert m["@context"] == "http://iiif.io/api/presentation/2/context.json"
    canvases = m["sequences"][0]["canvases"]
    assert len(canvases) == 3
    ids = []
    for c in canvases:
        res = c["images"][0]["resource"]
        svc = res["service"]
        assert isinstance(svc, dict)
        assert svc["profile"] == "http://iiif.io/api/image/2/level2.json"
        cid = svc["@id"].rsplit("/", 1)[1]
        ids.append(cid)
        assert svc["@id"] == srv.url(f"/iiif/2/{cid}")
        assert res["@id"] == srv.url(f"/iiif/2/{cid}/full/full/0/default.jpg")
    assert ids == ["mv", "mv-2", "mv-3"]
    assert len(get(srv, "/manifest/v2/mv.json").json()["sequences"][0]["canvases"]) == 1
    info = requests.get(canvases[1]["images"][0]["resource"]["service"]["@id"] + "/info.json",
                        timeout=T)
    assert info.json()["@id"] == srv.url("/iiif/2/mv-2")


def test_manifest_v3(srv):
    r = get(srv, "/manifest/v3/m3.json?canvases=2")
    m = r.json()
    assert m["@context"] == "http://iiif.io/api/presentation/3/context.json"
    assert m["type"] == "Manifest" and len(m["items"]) == 2
    for canvas, cid in zip(m["items"], ["m3", "m3-2"], strict=True):
        assert canvas["type"] == "Canvas"
        page = canvas["items"][0]
        assert page["type"] == "AnnotationPage"
        anno = page["items"][0]
        assert (anno["type"], anno["motivation"]) == ("Annotation", "painting")
        body = anno["body"]
        assert body["type"] == "Image"
        assert body["id"] == srv.url(f"/iiif/3/{cid}/full/600,/0/default.jpg")
        assert isinstance(body["service"], list) and len(body["service"]) == 1
        svc = body["service"][0]
        assert svc["@type"] == "ImageService2" and svc["@id"] == srv.url(f"/iiif/2/{cid}")
    img = requests.get(m["items"][0]["items"][0]["items"][0]["body"]["id"], timeout=T)
    assert decode(img.content).size == (600, 800)
    assert get(srv, "/manifest/v3/m3/manifest?canvases=2").content == r.content
    assert get(srv, "/manifest/v3/m3/manifest").json()["items"][0]["id"] == m["items"][0]["id"]


def test_manifest_bad_and_empty(srv):
    bad = get(srv, "/manifest/bad.json")
    assert bad.status_code == 200 and bad.headers["Content-Type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(bad.content)
    empty = get(srv, "/manifest/empty.json").json()
    assert empty["type"] == "Manifest" and empty["items"] == []


# -- server mechanics --------------------------------------------------------------------------


def test_not_found(srv):
    for path in ["/nope", "/img/a.png", "/iiif/4/x/info.json", "/status/abc"]:
        r = get(srv, path)
        assert r.status_code == 404 and r.headers["Content-Type"] == "text/html", path


def test_stats_and_control_routes(srv):
    settle(srv)
    srv.reset_stats()
    with requests.Session() as session:  # one connection: strictly one request at a time
        for path in ["/img/st1.jpg?w=20", "/img/st1.jpg?w=30", "/text/st1"]:
            assert session.get(srv.url(path), timeout=T).status_code == 200
    st = settle(srv)
    assert st["requests"] == 3
    assert st["by_path"] == {"/img/st1.jpg": 2, "/text/st1": 1}
    assert [(m, p) for _, m, p in st["log"]] == [
        ("GET", "/img/st1.jpg?w=20"),
        ("GET", "/img/st1.jpg?w=30"),
        ("GET", "/text/st1"),
    ]
    assert st["log"][0][0] <= st["log"][2][0] <= time.monotonic()
    assert st["concurrent_now"] == 0 and st["max_concurrent"] == 1
    remote = get(srv, "/__stats").json()  # control routes are not counted
    assert remote["requests"] == 3 and remote["by_path"] == st["by_path"]
    assert get(srv, "/__reset").status_code == 200
    assert srv.stats()["requests"] == 0 and srv.stats()["log"] == []


def test_keep_alive(srv):
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=T)
    try:
        socks = []
        for path in ["/img/ka.jpg?w=20", "/status/404", "/text/ka", "/json/ka"]:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            assert not resp.will_close, path
            socks.append(conn.sock)
        assert all(s is socks[0] for s in socks)  # one TCP connection for all four
    finally:
        conn.close()


def test_max_concurrent(srv):
    settle(srv)
    srv.reset_stats()
    barrier = threading.Barrier(4)
    codes: list[int] = []

    def hit() -> None:
        barrier.wait(T)
        codes.append(get(srv, "/slow/cc.jpg?delay=0.5&w=20").status_code)

    threads = [threading.Thread(target=hit) for _ in range(4)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(T)
    assert codes == [200] * 4
    assert time.monotonic() - t0 < 2.0  # served in parallel
    st = settle(srv)
    assert st["max_concurrent"] == 4 and st["concurrent_now"] == 0
    assert st["by_path"]["/slow/cc.jpg"] == 4


def test_two_servers_count_separately(pair):
    a, b = pair
    assert a.base.startswith("http://127.0.0.2:") and b.base.startswith("http://127.0.0.3:")
    a.reset_stats()
    b.reset_stats()
    assert get(a, "/img/two.jpg?w=20").status_code == 200
    assert get(b, "/img/two.jpg?w=20").status_code == 200
    assert get(b, "/text/two").status_code == 200
    assert a.stats()["requests"] == 1 and b.stats()["requests"] == 2
    assert b.stats()["by_path"] == {"/img/two.jpg": 1, "/text/two": 1}


def test_stop_does_not_hang_on_stalled_clients():
    s = ImageServer("127.0.0.4")
    with pytest.raises(RuntimeError):
        _ = s.base
    with s:
        assert s.url("img/a.jpg") == s.base + "/img/a.jpg"
        clients = [
            raw_get(s, "/stall/z.jpg?w=50"),
            raw_get(s, "/trickle/z.jpg?w=50&bps=1"),
            raw_get(s, "/slow/z.jpg?delay=30"),
            socket.create_connection((s.host, s.port), timeout=T),  # idle, no request
        ]
        read_head(clients[0])
        read_head(clients[1])
        deadline = time.monotonic() + T
        while s.stats()["concurrent_now"] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.stats()["concurrent_now"] == 3
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 3
    try:
        for c in clients:  # the server closed every connection (EOF, or RST on unread input)
            with contextlib.suppress(ConnectionResetError):
                while c.recv(65536):
                    pass
    finally:
        for c in clients:
            c.close()
    assert s.errors == []
    with pytest.raises(OSError):
        socket.create_connection((s.host, s.port), timeout=1).close()
    s.stop()  # idempotent
