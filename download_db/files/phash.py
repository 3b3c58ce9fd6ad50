"""Perceptual hashes of a decoded image (imagehash pHash/dHash) as signed 64-bit integers."""

from __future__ import annotations

import warnings
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

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

    Both start with convert('L'); doing it once here and handing the grey image
    to both saves a colour conversion (converting 'L' to 'L' is a copy).
    """
    grey = im if im.mode == "L" else im.convert("L")
    return (to_signed(imagehash.phash(grey).hash), to_signed(imagehash.dhash(grey).hash))


def file_hashes(path: Path) -> tuple[int, int]:
    """The hashes of a saved file, decoded the way imagehash's users open it."""
    with Image.open(path) as im, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        im.load()
        return hashes(im)


def distance(a: int, b: int) -> int:
    """Hamming distance of two stored hashes."""
    return ((a ^ b) & ((1 << BITS) - 1)).bit_count()
