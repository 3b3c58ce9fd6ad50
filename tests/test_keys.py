"""Canonical keys and ranking: real URL shapes, plus properties (scalar and vectorised agree)."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from download_db.ingest.group import canonicalise
from download_db.web import keys
from download_db.web.keys import Candidate, parse_identifier

BASE = "https://iiif.example.org/iiif/E00699064"

# (identifier, expected key, kind, size)
CASES = [
    (
        "https://inaturalist-open-data.s3.amazonaws.com/photos/334972716/original.jpeg",
        "https://inaturalist-open-data.s3.amazonaws.com/photos/334972716/original.jpeg",
        0,
        0,
    ),
    ("HTTP://WWW.Kew.ORG:80/img/a.JPG#frag", "http://www.kew.org/img/a.JPG", 0, 0),
    ("https://Example.org:443/x?b=1&a=2", "https://example.org/x?b=1&a=2", 0, 0),
    ("https://example.org:8443/x", "https://example.org:8443/x", 0, 0),
    ("http://example.org", "http://example.org/", 0, 0),
    ("  http://example.org/a b.jpg  ", "http://example.org/a%20b.jpg", 0, 0),
    # IIIF Presentation manifests and info.json collapse to the identifier base
    (
        "https://iiif-manifest.oxalis.br.fgov.be/specimen/BR5020103035216/manifest",
        "https://iiif-manifest.oxalis.br.fgov.be/specimen/BR5020103035216",
        2,
        keys.SIZE_FULL,
    ),
    (f"{BASE}/manifest.json", BASE, 2, keys.SIZE_FULL),
    (f"{BASE}/info.json", BASE, 1, keys.SIZE_FULL),
    # Image API renderings, v2 and v3 size syntax, any region/rotation/quality/format
    (f"{BASE}/full/full/0/default.jpg", BASE, 0, keys.SIZE_FULL),
    (f"{BASE}/full/max/0/default.jpg", BASE, 0, keys.SIZE_FULL),
    (f"{BASE}/full/^max/0/default.png", BASE, 0, keys.SIZE_FULL),
    (f"{BASE}/full/1600,/0/default.jpg", BASE, 0, 1600),
    (f"{BASE}/full/,1200/0/default.jpg", BASE, 0, 1200),
    (f"{BASE}/full/!1024,1024/90/gray.webp", BASE, 0, 1024),
    (f"{BASE}/full/600,800/!0/bitonal.tif", BASE, 0, 800),
    (f"{BASE}/full/pct:50/0/color.jpg", BASE, 0, 0),
    (f"{BASE}/full/pct:100/0/color.jpg", BASE, 0, keys.SIZE_FULL),
    (f"{BASE}/0,0,500,500/full/0/default.jpg", BASE, 0, 0),
    (f"{BASE}/pct:10,10,80,80/max/0/default.jpg", BASE, 0, 0),
    (f"{BASE}/square/256,/0/default.jpg", BASE, 0, 0),
    (
        "http://quod.lib.umich.edu/cgi/i/image/api/image/herb00ic:1224/full/res:0/0/native.jpg",
        "http://quod.lib.umich.edu/cgi/i/image/api/image/herb00ic:1224",
        0,
        0,
    ),
    # look-alikes that are not IIIF stay themselves
    (
        "https://example.org/photos/2021/09/12/default.jpg",
        "https://example.org/photos/2021/09/12/default.jpg",
        0,
        0,
    ),
    ("https://example.org/manifest", "https://example.org/manifest", 0, 0),
]


@pytest.mark.parametrize(("raw", "key", "kind", "size"), CASES)
def test_real_shapes(raw: str, key: str, kind: int, size: int) -> None:
    c = parse_identifier(raw)
    assert isinstance(c, Candidate)
    assert (c.key, c.kind, c.size) == (key, kind, size)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", keys.SKIP_EMPTY),
        ("   ", keys.SKIP_EMPTY),
        ("http://collections.example.org/media/None", keys.SKIP_NONE),
        ("ftp://127.0.0.1/h1/img1.jpg", keys.SKIP_SCHEME),
        ("urn:uuid:1234", keys.SKIP_SCHEME),
        ("not available", keys.SKIP_SCHEME),
        ("www.example.org/img.jpg", keys.SKIP_SCHEME),
        ("file:///etc/passwd", keys.SKIP_SCHEME),
        ("http://", keys.SKIP_URL),
        ("http://exa mple.org/x", keys.SKIP_URL),
        ("http://example.org:abc/x", keys.SKIP_URL),
    ],
)
def test_unusable(raw: str, reason: str) -> None:
    assert parse_identifier(raw) == reason


def test_host_is_lowercase_name_without_port() -> None:
    c = parse_identifier("http://User@Images.Example.ORG:8080/a.jpg")
    assert isinstance(c, Candidate)
    assert c.host == "images.example.org"
    assert c.url == "http://User@images.example.org:8080/a.jpg"


def test_ranking_largest_first_direct_before_manifest_then_file_order() -> None:
    urls = [
        f"{BASE}/full/600,/0/default.jpg",
        f"{BASE}/manifest",
        f"{BASE}/full/max/0/default.jpg",
        f"{BASE}/full/1600,/0/default.jpg",
        f"{BASE}/info.json",
        f"{BASE}/full/600,/0/default.jpg",
    ]
    cands = [parse_identifier(u) for u in urls]
    ranked = keys.rank_candidates(cands)  # type: ignore[arg-type]
    assert [c.url for c in ranked] == [
        f"{BASE}/full/max/0/default.jpg",
        f"{BASE}/info.json",
        f"{BASE}/manifest",
        f"{BASE}/full/1600,/0/default.jpg",
        f"{BASE}/full/600,/0/default.jpg",
    ]


# --- properties -------------------------------------------------------------

_segment = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ0123456789-_.~%", min_size=1, max_size=12
)
_host = st.from_regex(r"[a-z0-9]{1,8}(\.[a-z0-9]{1,8}){0,2}", fullmatch=True)
_region = st.sampled_from(["full", "square", "0,0,100,200", "pct:10,10,50,50", "FULL"])
_size = st.sampled_from(
    [
        "full",
        "max",
        "^max",
        "1600,",
        ",1200",
        "!1024,1024",
        "600,800",
        "pct:50",
        "^!800,800",
        "res:0",
    ]
)
_quality = st.sampled_from(["default", "color", "gray", "bitonal", "native", "Default"])
_rotation = st.sampled_from(["0", "90", "!0", "180.5"])
_fmt = st.sampled_from(["jpg", "png", "tif", "webp", "JPG"])


@st.composite
def iiif_family(draw):
    """A IIIF identifier base and a few URLs that all show that one image."""
    scheme = draw(st.sampled_from(["http", "https", "HTTPS"]))
    host = draw(_host)
    port = draw(st.sampled_from(["", ":8080", ":443" if scheme.lower() == "https" else ":80"]))
    path = "/" + "/".join(draw(st.lists(_segment, min_size=1, max_size=3)))
    base = f"{scheme}://{host.upper() if draw(st.booleans()) else host}{port}{path}"
    variants = [f"{base}/manifest", f"{base}/manifest.json", f"{base}/info.json"]
    for _ in range(draw(st.integers(1, 4))):
        variants.append(
            f"{base}/{draw(_region)}/{draw(_size)}/{draw(_rotation)}"
            f"/{draw(_quality)}.{draw(_fmt)}"
        )
    return variants


@settings(max_examples=300, deadline=None)
@given(iiif_family())
def test_every_rendering_of_one_identifier_has_one_key(urls: list[str]) -> None:
    found = {parse_identifier(u).key for u in urls}  # type: ignore[union-attr]
    assert len(found) == 1


_any_url = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda s, h, p, q: f"{s}://{h}{p}{q}",
        st.sampled_from(["http", "https", "HTTP", "ftp", "Https"]),
        st.one_of(_host, st.text(max_size=10)),
        st.text(alphabet="/abcXYZ019-._~%?=&# \t\u00e9\u00a0", max_size=40),
        st.sampled_from(
            [
                "",
                "/manifest",
                "/info.json",
                "/full/max/0/default.jpg",
                "/full/!600,600/0/gray.png",
                "/None",
                "?x=1",
                "#frag",
            ]
        ),
    ),
    iiif_family().map(lambda v: v[-1]),
)


@settings(max_examples=500, deadline=None)
@given(_any_url)
def test_key_is_idempotent(raw: str) -> None:
    c = parse_identifier(raw)
    if isinstance(c, Candidate):
        again = parse_identifier(c.url)
        assert isinstance(again, Candidate)
        assert again == c  # the normalised URL is a fixed point


@settings(max_examples=300, deadline=None)
@given(st.lists(_any_url, min_size=1, max_size=30))
def test_vectorised_canonicalise_equals_scalar(raws: list[str]) -> None:
    url, key, host, kind, size, reason = canonicalise(pa.array(raws, pa.string()))
    for i, raw in enumerate(raws):
        c = parse_identifier(raw)
        if isinstance(c, Candidate):
            assert reason[i].as_py() == ""
            assert (
                url[i].as_py(),
                key[i].as_py(),
                host[i].as_py(),
                int(kind[i]),
                int(size[i]),
            ) == (c.url, c.key, c.host, c.kind, c.size), raw
        else:
            assert reason[i].as_py() == c, raw
