"""Image bytes in, verified output bytes out: decode, orient, flatten, resize, encode (pure)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from ..web import sniff
from . import phash

# Herbarium sheets are legitimately 100+ MP (600 dpi A3 is ~70 MP, 1200 dpi is
# ~280 MP). JPEGs are decoded at 1/2..1/8 scale via draft() so their memory is
# small; other formats decode in full (3 bytes/pixel), so 300 MP ~ 900 MB per
# worker is the ceiling we accept.
DEFAULT_MAX_PIXELS = 300_000_000
# JPEG DCT downscaling lands on 1/2, 1/4, 1/8 of the source; we take the
# coarsest scale that keeps the long edge within this fraction of the target,
# then resize the small rest (3.6x faster than a full decode + LANCZOS).
DRAFT_SLACK = 0.95

Image.MAX_IMAGE_PIXELS = None  # we enforce our own limit, per image, with a clear error


class ImageError(Exception):
    """The bytes are not a usable image. ``error_type`` is the taxonomy name."""

    def __init__(self, error_type: str, detail: str) -> None:
        super().__init__(detail)
        self.error_type = error_type
        self.detail = detail


@dataclass(frozen=True)
class Output:
    data: bytes
    ext: str  # file extension: 'jpg', or the sniffed format for kept originals
    width: int
    height: int
    source_format: str  # what the input was (jpeg, png, tiff, dng, ...)
    raw_unprocessed: bool = False  # a camera raw kept as is (no decoder could read it)
    # imagehash pHash/dHash (phash.py) of the saved file; None where we did
    # not decode (kept originals, raws): `gbif-download-db hash` fills those in
    phash: int | None = None
    dhash: int | None = None
    edges: bytes | None = None  # edgehash.py: what a crop of one edge keeps


def _draft_scale(long_edge: int, target: int) -> int:
    scale = 1
    for s in (2, 4, 8):
        if long_edge / s >= target * DRAFT_SLACK:
            scale = s
    return scale


MIN_EDGE = 32  # 1x1 spacers and tiny "image not available" icons are not specimens


def _check_pixels(w: int, h: int, max_pixels: int) -> None:
    if max(w, h) < MIN_EDGE:
        raise ImageError("placeholder_image", f"image is only {w}x{h} px (a placeholder, "
                                              f"not a specimen photo)")
    if w * h > max_pixels:
        raise ImageError("too_large", f"image is {w}x{h} = {w * h / 1e6:.0f} MP, above the "
                                      f"{max_pixels / 1e6:.0f} MP limit (decompression bomb guard)")


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB with alpha flattened on white; 16-bit and float images scaled to 8-bit."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        im = im.point(lambda v: v * (1 / 256)).convert("L")
    elif im.mode == "F":
        im = im.convert("L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        white = Image.new("RGB", im.size, (255, 255, 255))
        white.paste(im, mask=im.getchannel("A"))
        return white
    return im if im.mode == "RGB" else im.convert("RGB")


def _fit(im: Image.Image, max_size: int) -> Image.Image:
    w, h = im.size
    long_edge = max(w, h)
    if long_edge <= max_size:
        return im
    r = max_size / long_edge
    size = (max(1, round(w * r)), max(1, round(h * r)))
    if r >= 0.75:
        # the small rest after a DCT draft: bilinear is 2x faster than Lanczos
        # here and indistinguishable at this ratio
        return im.resize(size, Image.Resampling.BILINEAR)
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _encode(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _output(out: Image.Image, quality: int, src: str) -> Output:
    # Hashed from the JPEG we save, decoded again, not from the image we encoded: the
    # encode moves pixels, and the encoded image's hashes differ from the saved file's
    # in 5 % (pHash) and 21 % (dHash) of images, by up to 4 bits (bench/hashing.py
    # --equality). The stored values are then imagehash's for the file, as the backfill
    # and anyone re-hashing the collection get them; the decode costs ~3 ms at 1024 px.
    data = _encode(out, quality)
    ph, dh, edges = phash.file_hashes(io.BytesIO(data))
    return Output(data, "jpg", out.width, out.height, src, phash=ph, dhash=dh, edges=edges)


def convert(data: bytes, *, max_size: int = 1024, quality: int = 85,
            max_pixels: int = DEFAULT_MAX_PIXELS, _as_tiff: bool = False) -> Output:
    """Decode, apply EXIF orientation, flatten alpha, shrink to ``max_size`` long
    edge, encode JPEG. Camera raws go through rawpy; one that cannot be decoded
    is returned as is, flagged raw_unprocessed."""
    fmt = sniff.image_format(data[:4096])
    if fmt in sniff.RAW_FORMATS and not _as_tiff:
        return _convert_raw(data, fmt, max_size, quality, max_pixels)
    im = _open(data)
    try:
        w, h = im.size
        _check_pixels(w, h, max_pixels)
        src = (im.format or fmt or "unknown").lower()
        if im.format == "JPEG":
            s = _draft_scale(max(w, h), max_size)
            if s > 1:
                im.draft(im.mode if im.mode in ("RGB", "L") else "RGB", (w // s, h // s))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
        out = _fit(_to_rgb(ImageOps.exif_transpose(im)), max_size)
        return _output(out, quality, src)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # a body cut short is worth another try; anything else will not improve
        kind = "truncated" if "truncated" in str(e) else "not_an_image"
        raise ImageError(kind, f"cannot decode image: {e}") from None
    finally:
        im.close()


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageError("not_an_image", f"not a decodable image: {e}") from None


def _convert_raw(data: bytes, fmt: str, max_size: int, quality: int, max_pixels: int) -> Output:
    import rawpy  # imported lazily: most runs never see a raw file

    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            w, h = raw.sizes.width, raw.sizes.height
            _check_pixels(w, h, max_pixels)
            half = max(w, h) / 2 >= max_size * DRAFT_SLACK
            rgb = raw.postprocess(use_camera_wb=True, half_size=half, output_bps=8)
    except ImageError:
        raise
    except Exception:  # noqa: BLE001 - rawpy raises many LibRaw types; any means "cannot decode"
        return _tiff_or_raw(data, fmt, max_size, quality, max_pixels)
    if not rgb.size or int(rgb.max()) == 0:
        return _tiff_or_raw(data, fmt, max_size, quality, max_pixels)
    return _output(_fit(Image.fromarray(rgb), max_size), quality, fmt)


def _tiff_or_raw(data: bytes, fmt: str, max_size: int, quality: int, max_pixels: int) -> Output:
    """A Nikon/Sony/Pentax-made TIFF that LibRaw cannot read may be an ordinary
    TIFF (the Make tag was all we had): let Pillow try before keeping it raw."""
    if fmt in ("nef", "arw", "pef"):
        try:
            out = convert(data, max_size=max_size, quality=quality, max_pixels=max_pixels,
                          _as_tiff=True)
            if out.width and out.height:
                return out
        except ImageError:
            pass
    return keep_raw(data, fmt)


def keep_raw(data: bytes, fmt: str) -> Output:
    """A raw we could not convert: kept byte for byte for a later conversion pass."""
    return Output(data, sniff.EXT.get(fmt, "raw"), 0, 0, fmt, raw_unprocessed=True)


def verify_original(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Output:
    """Cheap check for storing originals: a known format whose header parses and,
    for JPEG and PNG, whose end marker is present (truncation). No full decode."""
    fmt = sniff.image_format(data[:4096])
    if fmt is None:
        raise ImageError("not_an_image", "no image signature in the body")
    if fmt in sniff.RAW_FORMATS:
        return Output(data, sniff.EXT[fmt], 0, 0, fmt)
    if fmt == "jpeg" and b"\xff\xd9" not in data[-4096:]:
        raise ImageError("truncated", "JPEG has no end-of-image marker")
    if fmt == "png" and b"IEND" not in data[-64:]:
        raise ImageError("truncated", "PNG has no IEND chunk")
    im = _open(data)
    try:
        w, h = im.size
    finally:
        im.close()
    _check_pixels(w, h, max_pixels)
    return Output(data, sniff.EXT.get(fmt, "img"), w, h, fmt)


def thumbnail(data: bytes, edge: int = 160) -> bytes:
    """A small JPEG of an image (the report's inline example of a placeholder)."""
    im = _open(data)
    try:
        im.draft("RGB", (edge, edge))
        small = _to_rgb(ImageOps.exif_transpose(im))
        small.thumbnail((edge, edge))
        return _encode(small, 80)
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError("not_an_image", f"cannot decode: {e}") from None
    finally:
        im.close()


def verify_saved(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Output:
    """Check a file we (or an earlier run) wrote: a complete, decodable image.
    Used to adopt files instead of fetching them again; decodes fully for JPEGs
    we made (small), header + end marker for kept originals."""
    fmt = sniff.image_format(data[:4096])
    if fmt in sniff.RAW_FORMATS:
        return Output(data, sniff.EXT[fmt], 0, 0, fmt, raw_unprocessed=True)
    out = verify_original(data, max_pixels=max_pixels)
    if fmt == "jpeg" and len(data) < 8 << 20:
        im = _open(data)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                im.load()
        except (OSError, ValueError, SyntaxError) as e:
            raise ImageError("truncated", f"cannot decode: {e}") from None
        finally:
            im.close()
    return out
