"""Image conversion and verification: real herbarium JPEGs, synthetic edge cases, DNG via rawpy."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from download_db.files import images
from download_db.files.images import ImageError
from download_db.web import sniff
from tests.helpers import make_dng

DATA = Path(__file__).parent / "data" / "images"
HERBARIUM = sorted(DATA.glob("herbarium_sheet_*.jpg"))
ORIENTATION = 0x0112


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def decode(out: images.Output) -> Image.Image:
    im = Image.open(io.BytesIO(out.data))
    im.load()
    return im


def noise(w: int, h: int, seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def close(px, expected, tol: int = 12) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(px, expected, strict=True))




# -- real herbarium sheets --------------------------------------------------------------


@pytest.mark.parametrize("path", HERBARIUM, ids=lambda p: p.stem[-5:])
@pytest.mark.parametrize("max_size", [1024, 700, 300])
def test_convert_real_herbarium_sheet(path, max_size):
    data = path.read_bytes()
    src = Image.open(io.BytesIO(data))
    assert src.size == (1400, 2100)
    out = images.convert(data, max_size=max_size)
    assert out.ext == "jpg" and out.source_format == "jpeg" and not out.raw_unprocessed
    assert 0.95 * max_size <= max(out.width, out.height) <= max_size
    assert out.height > out.width  # portrait stays portrait
    assert abs(out.width / out.height - 1400 / 2100) < 0.01
    im = decode(out)
    assert im.format == "JPEG" and im.mode == "RGB"
    assert im.size == (out.width, out.height)


@pytest.mark.parametrize("path", HERBARIUM, ids=lambda p: p.stem[-5:])
def test_convert_never_upscales(path):
    out = images.convert(path.read_bytes(), max_size=4000)
    assert (out.width, out.height) == (1400, 2100)
    small = images.convert(encode(noise(200, 120), "PNG"), max_size=1024)
    assert (small.width, small.height) == (200, 120)
    assert small.source_format == "png"


def test_convert_quality_changes_size():
    data = HERBARIUM[0].read_bytes()
    low = images.convert(data, max_size=600, quality=30)
    high = images.convert(data, max_size=600, quality=95)
    assert len(low.data) < len(high.data)
    assert (low.width, low.height) == (high.width, high.height)


def test_convert_large_jpeg_uses_draft_within_slack():
    data = encode(Image.new("RGB", (4000, 3000), (30, 120, 60)), "JPEG")
    out = images.convert(data, max_size=1024)
    # DCT 1/4 draft gives 1000 px: within 5% of the target, so no further resize
    assert (out.width, out.height) == (1000, 750)
    assert close(decode(out).getpixel((500, 375)), (30, 120, 60))


def test_too_large_on_real_sheet():
    with pytest.raises(ImageError) as e:
        images.convert(HERBARIUM[0].read_bytes(), max_pixels=1_000_000)
    assert e.value.error_type == "too_large"
    assert "1400x2100" in e.value.detail


# -- orientation --------------------------------------------------------------------------


def _two_tone_jpeg(orientation: int, size=(200, 100)) -> bytes:
    """Left half red, right half blue, with an EXIF orientation tag."""
    w, h = size
    im = Image.new("RGB", size, (255, 0, 0))
    im.paste((0, 0, 255), (w // 2, 0, w, h))
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encode(im, "JPEG", exif=exif, quality=95)


RED, BLUE = (255, 0, 0), (0, 0, 255)


@pytest.mark.parametrize(
    ("orientation", "top", "bottom"),
    [(6, RED, BLUE),  # rotate 90 CW: the left edge ends up on top
     (8, BLUE, RED)],  # rotate 90 CCW: the left edge ends up at the bottom
)
def test_exif_orientation_applied(orientation, top, bottom):
    out = images.convert(_two_tone_jpeg(orientation))
    assert (out.width, out.height) == (100, 200)
    im = decode(out)
    assert close(im.getpixel((50, 10)), top)
    assert close(im.getpixel((50, 190)), bottom)
    # no orientation left in the output, so viewers do not rotate it again
    assert im.getexif().get(ORIENTATION) in (None, 1)


def test_exif_orientation_with_draft_and_resize():
    out = images.convert(_two_tone_jpeg(6, size=(2400, 1200)), max_size=500)
    assert (out.width, out.height) == (250, 500)
    im = decode(out)
    assert close(im.getpixel((125, 20)), RED)
    assert close(im.getpixel((125, 480)), BLUE)


def test_no_orientation_keeps_layout():
    out = images.convert(_two_tone_jpeg(1))
    assert (out.width, out.height) == (200, 100)
    im = decode(out)
    assert close(im.getpixel((10, 50)), RED) and close(im.getpixel((190, 50)), BLUE)


# -- modes: alpha, palette, 16 bit, CMYK ----------------------------------------------------


def test_rgba_flattened_on_white():
    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # fully transparent black
    im.paste((255, 0, 0, 255), (0, 0, 32, 64))  # opaque red left half
    out = images.convert(encode(im, "PNG"))
    px = decode(out)
    assert px.mode == "RGB"
    assert close(px.getpixel((10, 32)), RED)
    assert close(px.getpixel((50, 32)), (255, 255, 255))  # not black


def test_rgba_half_transparent_blends_with_white():
    out = images.convert(encode(Image.new("RGBA", (64, 64), (255, 0, 0, 128)), "PNG"))
    assert close(decode(out).getpixel((32, 32)), (255, 127, 127))


def test_la_flattened_on_white():
    im = Image.new("LA", (64, 64), (0, 0))
    im.paste((0, 255), (0, 0, 32, 64))  # opaque black left half
    px = decode(images.convert(encode(im, "PNG")))
    assert close(px.getpixel((10, 32)), (0, 0, 0))
    assert close(px.getpixel((50, 32)), (255, 255, 255))


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_flattened_on_white(fmt):
    im = Image.new("P", (64, 64), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    im.paste(1, (0, 0, 32, 64))
    out = images.convert(encode(im, fmt, transparency=0))
    px = decode(out)
    assert px.mode == "RGB"
    assert close(px.getpixel((10, 32)), RED)
    assert close(px.getpixel((50, 32)), (255, 255, 255))  # index 0 is transparent, not black


def test_16_bit_grayscale_png_scaled_to_8_bit():
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    im = Image.fromarray(ramp)
    data = encode(im, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = images.convert(data)
    px = decode(out).convert("L")
    assert (out.width, out.height) == (64, 64)
    assert px.getpixel((0, 0)) <= 4  # 0 -> 0
    assert px.getpixel((63, 63)) >= 250  # 65520 -> 255, not clipped garbage
    assert abs(px.getpixel((0, 32)) - (32 * 64 * 16) // 256) <= 4  # mid grey 128


def test_float_tiff_converted():
    out = images.convert(encode(Image.new("F", (64, 64), 100.0), "TIFF"))
    assert close(decode(out).getpixel((5, 5)), (100, 100, 100), tol=3)


def test_grayscale_and_bilevel_become_rgb():
    for mode, fill in (("L", 90), ("1", 1)):
        out = images.convert(encode(Image.new(mode, (64, 64), fill), "PNG"))
        assert decode(out).mode == "RGB"


def test_cmyk_jpeg_converted_to_rgb():
    data = encode(Image.new("CMYK", (3000, 2000), (0, 255, 255, 0)), "JPEG")
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = images.convert(data, max_size=512)
    assert (out.width, out.height) == (512, 341)
    im = decode(out)
    assert im.mode == "RGB"
    assert close(im.getpixel((100, 100)), RED)


@pytest.mark.parametrize("fmt", ["TIFF", "GIF", "WEBP", "BMP", "JPEG2000"])
def test_other_formats_converted(fmt):
    src = Image.new("RGB", (300, 200), (20, 40, 200))
    out = images.convert(encode(src, fmt), max_size=150)
    assert (out.width, out.height) == (150, 100)
    assert out.source_format == fmt.lower()  # Pillow's format name
    assert close(decode(out).getpixel((75, 50)), (20, 40, 200), tol=20)


# -- errors ----------------------------------------------------------------------------------


def test_too_large_uses_max_pixels():
    data = encode(noise(300, 300), "PNG")
    with pytest.raises(ImageError) as e:
        images.convert(data, max_pixels=50_000)
    assert e.value.error_type == "too_large"
    assert images.convert(data, max_pixels=90_000).width == 300  # exactly at the limit is fine


@pytest.mark.parametrize("size", [(1, 1), (31, 31), (31, 10)])
def test_placeholder_image(size):
    for fmt in ("GIF", "PNG", "JPEG"):
        with pytest.raises(ImageError) as e:
            images.convert(encode(Image.new("RGB", size, (0, 0, 0)), fmt))
        assert e.value.error_type == "placeholder_image"


def test_narrow_but_long_image_is_not_a_placeholder():
    out = images.convert(encode(Image.new("RGB", (10, 400), (0, 0, 0)), "PNG"))
    assert (out.width, out.height) == (10, 400)


@pytest.mark.parametrize(
    "data",
    [random.Random(7).randbytes(5000), b"", b"<html><body>Not found</body></html>",
     b"\xff\xd8\xff\xe0" + b"\x00" * 100],
)
def test_not_an_image(data):
    with pytest.raises(ImageError) as e:
        images.convert(data)
    assert e.value.error_type == "not_an_image"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_body(fmt):
    data = encode(noise(800, 600), fmt)
    with pytest.raises(ImageError) as e:
        images.convert(data[: len(data) // 2])
    assert e.value.error_type == "truncated"


def test_truncated_real_sheet():
    data = HERBARIUM[1].read_bytes()
    with pytest.raises(ImageError) as e:
        images.convert(data[: len(data) // 2], max_size=512)
    assert e.value.error_type == "truncated"


# -- camera raws ----------------------------------------------------------------------------------


def test_dng_converted_via_rawpy(tmp_path):
    data = make_dng(tmp_path)
    assert sniff.image_format(data[:4096]) == "dng"
    out = images.convert(data, max_size=1024)
    assert out.ext == "jpg" and out.source_format == "dng" and not out.raw_unprocessed
    assert (out.width, out.height) == (256, 192)
    im = decode(out)
    assert im.format == "JPEG" and im.size == (256, 192)
    assert np.asarray(im).max() > 0


def test_dng_half_size_and_resize(tmp_path):
    out = images.convert(make_dng(tmp_path), max_size=100)
    assert (out.width, out.height) == (100, 75)


def test_dng_pixel_limit_raises(tmp_path):
    data = make_dng(tmp_path)
    with pytest.raises(ImageError) as e:
        images.convert(data, max_pixels=10_000)
    assert e.value.error_type == "too_large"  # not swallowed into 'kept as raw'
    assert "256x192" in e.value.detail


@pytest.mark.parametrize("damage", ["truncated", "header_only", "zeroed"])
def test_broken_dng_kept_as_raw(tmp_path, damage):
    good = make_dng(tmp_path)
    n = 256 * 192 * 3 // 2  # 12-bit packed image data at the end of the file
    if damage == "truncated":
        data = good[: len(good) // 2]  # LibRaw: I/O error
    elif damage == "header_only":
        data = good[:2000]
    else:
        data = good[:-n] + bytes(n)  # decodes to all black: nothing to show
    assert sniff.image_format(data[:4096]) == "dng"
    out = images.convert(data, max_size=128)
    assert out.raw_unprocessed is True
    assert out.ext == "dng" and out.source_format == "dng"
    assert out.data == data  # byte for byte
    assert (out.width, out.height) == (0, 0)


def test_keep_raw_unknown_format_extension():
    out = images.keep_raw(b"abc", "weird")
    assert (out.ext, out.raw_unprocessed, out.data) == ("raw", True, b"abc")


def test_rgb_tiff_from_a_nikon_camera_is_converted():
    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    ifd[271] = "NIKON CORPORATION"
    ifd[272] = "NIKON D850"
    data = encode(Image.new("RGB", (400, 300), (200, 30, 30)), "TIFF", tiffinfo=ifd)
    out = images.convert(data, max_size=256)
    assert out.ext == "jpg" and (out.width, out.height) == (256, 192)


# -- verify_original / verify_saved -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "ext"),
    [("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"), ("WEBP", "webp"), ("TIFF", "tif"),
     ("BMP", "bmp"), ("JPEG2000", "jp2")],
)
def test_verify_original_formats(fmt, ext):
    data = encode(noise(120, 80), fmt)
    out = images.verify_original(data)
    assert out.ext == ext
    assert (out.width, out.height) == (120, 80)
    assert out.data is data  # stored as is, no re-encode
    assert not out.raw_unprocessed


def test_verify_original_real_sheet_and_dng(tmp_path):
    data = HERBARIUM[0].read_bytes()
    out = images.verify_original(data)
    assert (out.ext, out.width, out.height, out.source_format) == ("jpg", 1400, 2100, "jpeg")
    dng = make_dng(tmp_path)
    raw = images.verify_original(dng)
    assert (raw.ext, raw.source_format, raw.data) == ("dng", "dng", dng)


def test_verify_original_detects_truncation_without_decoding():
    jpeg = encode(noise(400, 300), "JPEG")
    png = encode(noise(400, 300), "PNG")
    for data in (jpeg[: len(jpeg) - 500], png[:-20]):
        with pytest.raises(ImageError) as e:
            images.verify_original(data)
        assert e.value.error_type == "truncated"
    # a JPEG whose body ends with the marker passes the cheap check
    assert images.verify_original(jpeg).width == 400


def test_verify_original_rejects_non_images_placeholders_and_bombs():
    for data, kind in ((b"<html>nope</html>", "not_an_image"),
                       (random.Random(1).randbytes(1000), "not_an_image"),
                       (encode(Image.new("RGB", (1, 1)), "GIF"), "placeholder_image"),
                       (encode(noise(300, 300), "PNG"), "too_large")):
        with pytest.raises(ImageError) as e:
            images.verify_original(data, max_pixels=10_000)
        assert e.value.error_type == kind


def test_verify_saved_accepts_our_output():
    out = images.convert(HERBARIUM[0].read_bytes(), max_size=512)
    saved = images.verify_saved(out.data)
    assert (saved.ext, saved.width, saved.height) == ("jpg", out.width, out.height)
    assert not saved.raw_unprocessed


def test_verify_saved_rejects_truncated_and_garbage():
    out = images.convert(HERBARIUM[1].read_bytes(), max_size=512)
    for data, kind in ((out.data[: len(out.data) // 2], "truncated"),
                       (b"\x00" * 100, "not_an_image")):
        with pytest.raises(ImageError) as e:
            images.verify_saved(data)
        assert e.value.error_type == kind


def test_verify_saved_flags_raws(tmp_path):
    dng = make_dng(tmp_path)
    out = images.verify_saved(dng)
    assert (out.ext, out.raw_unprocessed, out.data) == ("dng", True, dng)


def test_image_error_carries_type_and_detail():
    e = ImageError("truncated", "cut short")
    assert (e.error_type, e.detail, str(e)) == ("truncated", "cut short", "cut short")
