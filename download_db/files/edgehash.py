"""Edge hashes: a DCT hash of the region by each edge, which a crop of the opposite edge keeps."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Why: pHash scales the whole picture to 32x32, so cutting a strip off one edge (a
# colour chart, a ruler) stretches everything and moves 12-30 of its 64 bits; no
# distance that scales to 50M hashes covers that. A crop of one edge leaves the
# opposite edge and its length as they were, so a region anchored there and sized
# by that length holds the same pixels in both images, whatever the other side
# lost and however the image was scaled.
EDGES = ("top", "bottom", "left", "right")
OPPOSITE = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}
# The region's depth as a share of its edge's length: half a portrait sheet's width
# from the top or bottom (a third of it), half its height from a side (three
# quarters of its width, so a side can lose up to a quarter). Deeper regions leave
# less room for the crop; shallower ones were too alike on different sheets
# (0.4: two shipped sheets' bottoms 8 bits apart, 22 at 0.5).
DEPTH = 0.5
# Each region is box-averaged down by Pillow (reducing_gap) to under twice the 32x32,
# then resampled bilinear. Averaging the whole picture first instead (to 256 px) was
# 0.3 ms cheaper, but its cells straddle the region's bounds differently in each copy:
# the same region then differed by up to 4 bits, against 2 this way.
REDUCING_GAP = 2.0
FLAT_STD = 2.0  # a region flatter than this (grey levels) carries no picture: no hash
WORDS = 2  # per edge: the low DCT band (indexed) and the next band (checks a match)
SIZE = 8 * WORDS * len(EDGES)  # bytes of the stored value


def _dct_rows(n: int, size: int = 32) -> np.ndarray:
    """The first n rows of the unnormalised DCT-II matrix (scipy.fftpack.dct's):
    2 cos(pi k (2i + 1) / 2N). Two small products give just the coefficients used."""
    k = np.arange(n)[:, None]
    i = np.arange(size)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * size))


_ROWS, _COLS = _dct_rows(8), _dct_rows(16).T  # 8 vertical, 16 horizontal frequencies


def edge_hashes(grey: np.ndarray) -> bytes:
    """The stored value for a grey image ((h, w) uint8, the pixels pHash starts
    from): for each edge in EDGES order, two big-endian 64-bit words, the signs of
    the 8x8 lowest DCT coefficients of the region's 32x32 shrink against their median
    (pHash's rule) and of the 8x8 of the next higher horizontal frequencies. Zeros
    for a flat region. Deterministic for the same pixels, so the downloader and the
    backfill store the same value for a file."""
    grey = np.ascontiguousarray(grey, np.uint8)
    # maps the array's memory (no copy of the pixels)
    im = Image.frombuffer("L", (grey.shape[1], grey.shape[0]), grey, "raw", "L", 0, 1)
    w, h = im.size
    regions = np.empty((len(EDGES), 32, 32), np.float64)
    for n, edge in enumerate(EDGES):
        length, room = (w, h) if edge in ("top", "bottom") else (h, w)
        depth = min(DEPTH * length, room)
        box = {"top": (0, 0, w, depth), "bottom": (0, h - depth, w, h),
               "left": (0, 0, depth, h), "right": (w - depth, 0, w, h)}[edge]
        regions[n] = np.asarray(im.resize((32, 32), Image.Resampling.BILINEAR, box=box,
                                          reducing_gap=REDUCING_GAP))
    dct = _ROWS @ regions @ _COLS  # (edges, 8, 16)
    bands = np.stack([dct[:, :, :8], dct[:, :, 8:]], axis=1).reshape(len(EDGES), WORDS, 64)
    s = np.sort(bands, axis=2)
    median = (s[:, :, 31] + s[:, :, 32]) / 2
    bits = np.packbits(bands > median[:, :, None], axis=2)  # (edges, words, 8) bytes
    words = bits.reshape(len(EDGES), WORDS, 8).copy()
    words[regions.std(axis=(1, 2)) < FLAT_STD] = 0
    return words.tobytes()  # the bytes of each word in order: big-endian


def unpack(values: list[bytes]) -> np.ndarray:
    """Stored values -> an (n, len(EDGES), WORDS) uint64 array."""
    if not values:
        return np.empty((0, len(EDGES), WORDS), np.uint64)
    flat = np.frombuffer(b"".join(values), ">u8").astype(np.uint64)
    return flat.reshape(len(values), len(EDGES), WORDS)
