"""Perceptual hashes of a decoded image (imagehash pHash/dHash) as signed 64-bit integers."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import BinaryIO

import imagehash
import numpy as np
import scipy.fftpack
from PIL import Image
from threadpoolctl import threadpool_limits

from . import edgehash, lanczos

BITS = 64
_SIGN = 1 << (BITS - 1)


def to_signed(bits: np.ndarray) -> int:
    """imagehash's 8x8 bit array -> the SQLite INTEGER form (two's complement,
    first bit most significant, so the hex of the unsigned value is str(ImageHash))."""
    v = int(np.packbits(bits.ravel()).view(">u8")[0])
    return v - (1 << BITS) if v & _SIGN else v


def to_hex(value: int) -> str:
    """The stored signed integer as imagehash's 16-digit hex string."""
    return f"{value & ((1 << BITS) - 1):016x}"


def hashes(im: Image.Image) -> tuple[int, int]:
    """(phash, dhash) of an image, equal to imagehash.phash(im) and imagehash.dhash(im).

    Both start with convert('L'), done once here. imagehash then shrinks the grey
    image to 32x32 and 9x8 with Pillow's LANCZOS, two per-pixel loops over the whole
    image (most of the cost); lanczos.resize gives the same pixels from float64
    matrix products, and the DCT, median and differences below are imagehash's own
    steps on them. Where the installed Pillow resamples otherwise, imagehash runs.
    """
    if not _exact():
        grey = im if im.mode == "L" else im.convert("L")
        return (to_signed(imagehash.phash(grey).hash), to_signed(imagehash.dhash(grey).hash))
    return _hashes(grey_pixels(im))


def _hashes(pixels: np.ndarray) -> tuple[int, int]:
    small, diff = lanczos.resize(pixels.astype(np.float64), [(32, 32), (9, 8)])
    dct = scipy.fftpack.dct(scipy.fftpack.dct(small, axis=0), axis=1)[:8, :8]
    return to_signed(dct > median(dct)), to_signed(diff[:, 1:] > diff[:, :-1])


def all_hashes(im: Image.Image) -> tuple[int, int, bytes]:
    """(phash, dhash, edge hashes) of an image, from one grey conversion."""
    if not _exact():
        grey = im if im.mode == "L" else im.convert("L")
        return (*hashes(grey), edgehash.edge_hashes(np.asarray(grey)))
    pixels = grey_pixels(im)
    return (*_hashes(pixels), edgehash.edge_hashes(pixels))


def grey_pixels(im: Image.Image) -> np.ndarray:
    """im.convert('L') as an (h, w) uint8 array. An RGB image (what the downloader
    encodes) is converted straight into the array's memory with Pillow's
    convert_into (as its ImageTk does): np.asarray of a converted image copies the
    pixels twice more (tobytes), 0.05-0.15 ms at 1024 px."""
    if im.mode == "L":
        return np.asarray(im)
    if im.mode == "RGB" and _convert_into_works():
        im.load()
        return _convert_into(im)
    return np.asarray(im.convert("L"))


def _convert_into(im: Image.Image) -> np.ndarray:
    out = np.empty((im.height, im.width), np.uint8)
    # frombuffer with these arguments maps the array's memory (no copy)
    im.im.convert_into(Image.frombuffer("L", im.size, out, "raw", "L", 0, 1).im)
    return out


@functools.cache
def _convert_into_works() -> bool:
    """Whether the installed Pillow has convert_into and writes through to the array
    (once per process; otherwise convert('L') and a copy)."""
    rgb = np.random.default_rng(15).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    im = Image.fromarray(rgb, "RGB")
    try:
        return bool(np.array_equal(_convert_into(im), np.asarray(im.convert("L"))))
    except (AttributeError, TypeError, ValueError):
        return False


def median(a: np.ndarray) -> float:
    """np.median of an even number of values, which is the mean of the middle two
    of the sorted values, (s[n-1] + s[n]) / 2 in float64: the same operations from
    one sort instead of np.median's partition, checks and mean (~10 us)."""
    s = np.sort(a, axis=None)
    n = s.size // 2
    return float((s[n - 1] + s[n]) / 2)


@functools.cache
def _exact() -> bool:
    # one BLAS thread: the products take ~1 ms, and OpenBLAS's threads would spin on
    # cores the other downloads use (4x the CPU time measured on 2 busy cores)
    threadpool_limits(1, user_api="blas")
    return lanczos.matches_pillow()


def file_hashes(path: Path | BinaryIO) -> tuple[int, int, bytes]:
    """(phash, dhash, edge hashes) of a saved file (or its bytes), decoded the way
    imagehash's users open it."""
    with Image.open(path) as im, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        im.load()
        return all_hashes(im)


def distance(a: int, b: int) -> int:
    """Hamming distance of two stored hashes."""
    return ((a ^ b) & ((1 << BITS) - 1)).bit_count()
