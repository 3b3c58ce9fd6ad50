"""Magic-byte sniffing, content-type classes, text detection and page text (pure functions)."""

from __future__ import annotations

import io
import random
import struct

import pytest
from PIL import Image, TiffImagePlugin

from download_db.web import sniff
from tests.helpers import make_dng


def _encode(fmt: str, mode: str = "RGB", size: tuple[int, int] = (64, 48), **kw) -> bytes:
    im = Image.new(mode, size, (10, 200, 30) if mode == "RGB" else 128)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _pillow_tiff(make: str | None) -> bytes:
    """A real TIFF written by Pillow, optionally with a Make tag (as camera raws carry)."""
    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    if make is not None:
        ifd[271] = make
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buf, "TIFF", tiffinfo=ifd)
    return buf.getvalue()


def _raw_tiff(make: bytes, *, big_endian: bool = False, dng: bool = False) -> bytes:
    """A hand-built TIFF header + IFD0 with a Make tag (inline when <= 4 bytes)."""
    end = ">" if big_endian else "<"
    head = (b"MM\x00*" if big_endian else b"II*\x00") + struct.pack(end + "I", 8)
    entries = [(256, 3, 1, struct.pack(end + "HH", 32, 0)),  # ImageWidth
               (257, 3, 1, struct.pack(end + "HH", 32, 0))]  # ImageLength
    n = 3 + dng
    after_ifd = 8 + 2 + 12 * n + 4
    if len(make) <= 4:
        entries.append((271, 2, len(make), make.ljust(4, b"\x00")))
        blob = b""
    else:
        entries.append((271, 2, len(make), struct.pack(end + "I", after_ifd)))
        blob = make
    if dng:
        entries.append((50706, 1, 4, bytes([1, 4, 0, 0])))
    ifd = struct.pack(end + "H", n)
    for tag, typ, count, value in entries:
        ifd += struct.pack(end + "HHI", tag, typ, count) + value
    ifd += struct.pack(end + "I", 0)
    return head + ifd + blob + b"\x00" * 64




# -- image_format --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "kw", "expected"),
    [
        ("JPEG", {}, "jpeg"),
        ("PNG", {}, "png"),
        ("GIF", {}, "gif"),
        ("WEBP", {}, "webp"),
        ("TIFF", {}, "tiff"),
        ("JPEG2000", {}, "jp2"),  # JP2 box container
        ("JPEG2000", {"no_jp2": True}, "jp2"),  # bare J2K codestream (FF 4F FF 51)
        ("BMP", {}, "bmp"),
    ],
)
def test_image_format_of_pillow_images(fmt, kw, expected):
    data = _encode(fmt, **kw)
    assert sniff.image_format(data[:64]) == expected
    assert sniff.image_format(data) == expected
    assert expected in sniff.EXT


def test_image_format_dng_from_pidng(tmp_path):
    data = make_dng(tmp_path, 64, 48, value=2000)
    assert sniff.image_format(data[:4096]) == "dng"
    assert "dng" in sniff.RAW_FORMATS
    assert sniff.EXT["dng"] == "dng"


def test_image_format_dng_header_cut_short_falls_back_to_tiff(tmp_path):
    """With fewer bytes than IFD0 needs, the safe guess is plain TIFF (documented)."""
    data = make_dng(tmp_path, 64, 48, value=2000)
    assert sniff.image_format(data[:16]) == "tiff"


@pytest.mark.parametrize(
    ("make", "expected"),
    [("NIKON CORPORATION", "nef"), ("SONY", "arw"), ("PENTAX Corporation", "pef"),
     ("RICOH IMAGING COMPANY, LTD.", "pef"), ("Canon", "tiff"), (None, "tiff")],
)
def test_tiff_based_raws_by_make_tag(make, expected):
    data = _pillow_tiff(make)
    assert sniff.image_format(data[:4096]) == expected
    # a NEF/ARW is a raw (goes to rawpy); a plain TIFF is not
    assert (expected in sniff.RAW_FORMATS) == (expected not in ("tiff",))


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize(
    ("make", "expected"),
    [(b"NIKON CORPORATION\x00", "nef"), (b"SONY", "arw"), (b"sony\x00", "arw"),
     (b"Foo\x00", "tiff")],
)
def test_hand_built_tiff_make_both_byte_orders(make, expected, big_endian):
    """Make values of <= 4 bytes sit inline in the IFD entry; longer ones at an offset."""
    assert sniff.image_format(_raw_tiff(make, big_endian=big_endian)) == expected


@pytest.mark.parametrize("big_endian", [False, True])
def test_dng_version_tag_wins_over_make(big_endian):
    data = _raw_tiff(b"NIKON CORPORATION\x00", big_endian=big_endian, dng=True)
    assert sniff.image_format(data) == "dng"


def test_cr2_signature():
    head = b"II*\x00\x10\x00\x00\x00CR\x02\x00" + b"\x00" * 64
    assert sniff.image_format(head) == "cr2"
    assert sniff.EXT["cr2"] == "cr2"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x00\x00\x00\x18ftypcrx \x00\x00\x00\x01" + b"\x00" * 48, "cr3"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00" + b"\x00" * 48, "heif"),
        (b"FUJIFILMCCD-RAW 0201FF383501" + b"\x00" * 40, "raf"),
        (b"IIRO\x08\x00\x00\x00" + b"\x00" * 56, "orf"),
        (b"IIU\x00\x08\x00\x00\x00" + b"\x00" * 56, "rw2"),
        (b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 52, None),  # an MP4 video is no image
    ],
)
def test_other_camera_and_container_signatures(head, expected):
    assert sniff.image_format(head) == expected


@pytest.mark.parametrize(
    "head",
    [b"", b"\xff\xd8", b"<!DOCTYPE html><html>", b'{"a": 1}', b"BM short",
     b"RIFF\x00\x00\x00\x00WAVEfmt ", b"%PDF-1.7\n", b"\x00" * 64,
     random.Random(3).randbytes(64).replace(b"II", b"xx").replace(b"MM", b"xx")],
)
def test_unknown_bytes_are_none(head):
    assert sniff.image_format(head) is None


# -- content_type_class ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("ct", "expected"),
    [
        ("text/html", "text"),
        ("text/html; charset=UTF-8", "text"),
        ("  Text/Plain ; x=y", "text"),
        ("application/json", "text"),
        ("application/ld+json;profile=\"http://iiif.io/api/presentation/3/context.json\"",
         "text"),
        ("application/xml", "text"),
        ("application/xhtml+xml", "text"),
        ("application/vnd.api+json", "text"),
        ("application/javascript", "text"),
        ("image/svg+xml", "text"),  # vector markup: not a photo we can convert
        ("image/jpeg", "image"),
        ("IMAGE/PNG", "image"),
        ("image/tiff; q=1", "image"),
        ("application/octet-stream", None),
        ("binary/octet-stream", None),
        ("", None),
        (None, None),
    ],
)
def test_content_type_class(ct, expected):
    assert sniff.content_type_class(ct) == expected


# -- looks_like_text ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"<!DOCTYPE html><html><body>x</body></html>",
        b"   \r\n\t <html><head><title>404</title></head></html>",
        b"\xef\xbb\xbf<!doctype html>",  # UTF-8 BOM
        b"\xef\xbb\xbf\n   <HTML>",  # BOM, then whitespace, upper case
        b'{"error": "not found"}',
        b"  [1, 2, 3]",
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchKey</Code></Error>',
        b"<!-- comment --><div>x</div>",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        b"Not Found\n",
        b"The requested image is not available at this time.\r\n",
        "Fichier introuvable: é à ü".encode(),
    ],
)
def test_looks_like_text_true(body):
    assert sniff.looks_like_text(body) is True


def test_looks_like_text_false_for_images_and_binary():
    assert sniff.looks_like_text(_encode("JPEG")) is False
    assert sniff.looks_like_text(_encode("PNG")) is False
    assert sniff.looks_like_text(_encode("GIF")) is False
    assert sniff.looks_like_text(random.Random(0).randbytes(4096)) is False
    assert sniff.looks_like_text(b"abc\x00def") is False  # NUL: binary
    assert sniff.looks_like_text(b"") is False
    assert sniff.looks_like_text(b"   \n\t") is False  # nothing but whitespace
    assert sniff.looks_like_text("Fehler \xe4".encode("latin-1")) is False  # not UTF-8


def test_looks_like_text_mostly_control_chars_is_not_text():
    body = b"ab" + bytes(range(1, 9)) * 10
    assert sniff.looks_like_text(body) is False


def test_looks_like_text_long_ascii_text():
    assert sniff.looks_like_text(b"Service temporarily unavailable. " * 400) is True


def test_looks_like_text_utf8_text_cut_mid_character():
    body = ("Доступ запрещён € " * 400).encode("utf-8")
    assert len(body) > 4096
    assert sniff.looks_like_text(body[:4096]) is True


# -- visible_text -----------------------------------------------------------------------------


def test_visible_text_strips_scripts_styles_and_tags():
    page = (b"<html><head><title>Error</title><style>p { color: red }</style>"
            b"<script>alert(1)</script><SCRIPT type='text/javascript'>var x = '<b>';</SCRIPT >"
            b"<noscript>enable js</noscript></head>"
            b"<body><div class=\"a\"\n id='b'><p>Image\n\n\t   not <b>found</b></p></div>"
            b"</body></html>")
    text = sniff.visible_text(page)
    assert text == "Error Image not found"
    for gone in ("alert", "color", "var x", "enable js", "<", ">"):
        assert gone not in text


def test_visible_text_decodes_entities():
    text = sniff.visible_text(b"<p>Caf&eacute; &amp; bar&nbsp;&#8211; &#x41;&lt;b&gt;</p>")
    # entities are decoded after tags are stripped, so escaped markup shows as text
    # (it is what a browser would display), and &nbsp; is collapsed like whitespace
    assert text == "Café & bar – A<b>"


def test_visible_text_escaped_script_is_shown_as_text_not_removed():
    """Observed: '&lt;script&gt;' is page text (a browser shows it), decoded to '<script>';
    only real <script> elements are dropped."""
    text = sniff.visible_text(b"<p>&lt;script&gt;x()&lt;/script&gt;</p><script>y()</script>")
    assert text == "<script>x()</script>"
    assert "y()" not in text


def test_visible_text_collapses_whitespace_and_caps_length():
    assert sniff.visible_text(b"  a \n\n b\t\tc  ") == "a b c"
    assert sniff.visible_text(b"x" * 5000) == "x" * 1800
    assert sniff.visible_text(b"<p>" + b"word " * 100 + b"</p>", limit=12) == "word word wo"


def test_visible_text_replaces_control_chars_and_bad_utf8():
    text = sniff.visible_text("caf\u00e9".encode() + b"\x00\x07\xff ok")
    assert text.startswith("café")
    assert text.endswith("ok")
    assert "\x00" not in text and "\x07" not in text
    assert "\ufffd" in text  # the undecodable byte


def test_visible_text_json_and_plain_text_pass_through():
    assert sniff.visible_text(b'{"error": "no such image"}') == '{"error": "no such image"}'
    assert sniff.visible_text(b"Not Found") == "Not Found"
    assert sniff.visible_text(b"") == ""


def test_visible_text_reads_only_the_first_256_kib():
    body = b"a" * (256 * 1024) + b" TAIL"
    assert "TAIL" not in sniff.visible_text(body, limit=10**6)
