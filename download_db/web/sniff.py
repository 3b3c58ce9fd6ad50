"""What came back: image format by magic bytes, text bodies by type or content, page text (pure)."""

from __future__ import annotations

import html
import re
import struct

# Extensions we store originals under, by sniffed format (never from the URL).
EXT = {"jpeg": "jpg", "png": "png", "gif": "gif", "webp": "webp", "tiff": "tif", "jp2": "jp2",
       "bmp": "bmp", "dng": "dng", "cr2": "cr2", "cr3": "cr3", "nef": "nef", "arw": "arw",
       "orf": "orf", "rw2": "rw2", "raf": "raf", "pef": "pef", "heif": "heic"}
RAW_FORMATS = {"dng", "cr2", "cr3", "nef", "arw", "orf", "rw2", "raf", "pef"}

_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/xhtml",
               "application/ld+json", "application/javascript")
_MARKUP = (b"<!doctype", b"<html", b"<head", b"<body", b"<?xml", b"<!--", b"<div", b"<p",
           b"<table", b"<title", b"<meta", b"<script", b"<svg")


def image_format(head: bytes) -> str | None:
    """Image format from the first bytes (>= 64 recommended), or None."""
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or head[:4] == b"\xff\x4f\xff\x51":
        return "jp2"
    if head[:2] == b"BM" and len(head) >= 26:
        return "bmp"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand == b"crx ":
            return "cr3"
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"avif"):
            return "heif"
    if head[:16] == b"FUJIFILMCCD-RAW ":
        return "raf"
    if head[:4] in (b"IIRO", b"IIRS", b"MMOR"):
        return "orf"
    if head[:4] == b"IIU\x00":
        return "rw2"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff_family(head)
    return None


def _tiff_family(head: bytes) -> str:
    """TIFF, or a camera raw built on TIFF (DNG, CR2, NEF, ARW, PEF)."""
    if head[8:10] == b"CR":
        return "cr2"
    end = "<" if head[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack_from(end + "I", head, 4)
        (n,) = struct.unpack_from(end + "H", head, ifd)
        tags = {struct.unpack_from(end + "H", head, ifd + 2 + 12 * i)[0]
                for i in range(min(n, 512))}
        make = b""
        if 271 in tags:  # Make
            for i in range(min(n, 512)):
                tag, typ, count, off = struct.unpack_from(end + "HHII", head, ifd + 2 + 12 * i)
                if tag == 271:
                    make = head[off:off + count] if count > 4 else head[ifd + 10 + 12 * i:][:count]
    except struct.error:
        return "tiff"  # header beyond what we were given: plain TIFF is the safe guess
    if 50706 in tags:  # DNGVersion
        return "dng"
    make = make.upper()
    if make.startswith(b"NIKON"):
        return "nef"
    if make.startswith(b"SONY"):
        return "arw"
    if make.startswith(b"PENTAX") or make.startswith(b"RICOH"):
        return "pef"
    return "tiff"


def content_type_class(content_type: str | None) -> str | None:
    """'text' for HTML/text/JSON/XML types, 'image' for image/*, else None."""
    if not content_type:
        return None
    ct = content_type.split(";", 1)[0].strip().lower()
    if ct.startswith(_TEXT_TYPES) or ct.endswith(("+json", "+xml")):
        return "text"
    if ct.startswith("image/"):
        return "image"
    return None


def looks_like_text(head: bytes) -> bool:
    """True if a body is a page or document, not an image: markup, JSON, or plain text."""
    if image_format(head) is not None:
        return False
    s = head.lstrip(b"\xef\xbb\xbf").lstrip()
    low = s[:64].lower()
    if low.startswith(_MARKUP) or low[:1] in (b"{", b"["):
        return True
    sample = s[:4096]
    if not sample:
        return False
    if b"\x00" in sample:
        return False
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as e:
        # callers pass a 4 KiB head: it may end inside a character
        if len(sample) < 4096 or e.start < len(sample) - 3:
            return False
        text = sample[: e.start].decode("utf-8")  # the sample cut a character in two
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable / len(text) > 0.95


_DROP = re.compile(rb"<(script|style|noscript)\b.*?</\1\s*>", re.I | re.S)
_TAG = re.compile(rb"<[^>]*>", re.S)
_WS = re.compile(r"\s+")


def visible_text(body: bytes, limit: int = 1800) -> str:
    """The human-visible text of an HTML/XML/JSON/text body: tags stripped,
    entities decoded, whitespace collapsed, capped at ``limit`` characters."""
    b = _DROP.sub(b" ", body[: 256 * 1024])
    b = _TAG.sub(b" ", b)
    text = html.unescape(b.decode("utf-8", "replace"))
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return _WS.sub(" ", text).strip()[:limit]
