"""Pillow's LANCZOS resize of a grey image, bit for bit, as float64 matrix products (pure)."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

# Pillow (libImaging/Resample.c, 8 bits per channel): the weights of each output pixel
# are computed in double, normalised, and rounded to integers with 22 fraction bits;
# each pass sums pixel * weight in an int from 1 << 21 and keeps clip(sum >> 22, 0, 255).
# Those sums are integers below 2^40, so float64 matrix products (BLAS, any order,
# with or without FMA) give exactly Pillow's sums, for all the columns of both
# hashes in one product instead of Pillow's per-pixel loops.
PRECISION_BITS = 22
SUPPORT = 3.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    # math.sin is the C library's sin that Pillow calls: the same doubles
    if -3.0 <= x < 3.0:
        return _sinc(x) * _sinc(x / 3)
    return 0.0


@lru_cache(maxsize=2048)
def _coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input index, output index, integer weight) of Pillow's precompute_coeffs and
    normalize_coeffs_8bpc, same operations in the same order."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = SUPPORT * filterscale
    inv = 1.0 / filterscale
    rows, cols, vals = [], [], []
    for xx in range(out_size):
        center = 0.0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        ws = [_lanczos((x + xmin - center + 0.5) * inv) for x in range(xmax)]
        ww = 0.0
        for w in ws:
            ww += w
        for x, w in enumerate(ws):
            k = w / ww if ww != 0.0 else w
            rows.append(xmin + x)
            cols.append(xx)
            vals.append(int(-0.5 + k * (1 << PRECISION_BITS)) if k < 0
                        else int(0.5 + k * (1 << PRECISION_BITS)))
    return np.array(rows, np.intp), np.array(cols, np.intp), np.array(vals, np.float64)


@lru_cache(maxsize=64)
def weights(in_size: int, outs: tuple[int, ...]) -> np.ndarray:
    """(in_size, sum(outs)) matrix: one column per output pixel of each size in outs."""
    m = np.zeros((in_size, sum(outs)))
    at = 0
    for out in outs:
        rows, cols, vals = _coefficients(in_size, out)
        m[rows, cols + at] = vals
        at += out
    m.flags.writeable = False
    return m


def _clip8(acc: np.ndarray) -> np.ndarray:
    acc += 1 << (PRECISION_BITS - 1)
    acc *= 1.0 / (1 << PRECISION_BITS)  # a power of two: exact
    np.floor(acc, out=acc)
    return np.clip(acc, 0, 255, out=acc)


def _horizontal_first(w: int, h: int, ow: int, oh: int) -> bool:
    # Pillow 11+: "if height is being scaled down more than twice the amount the
    # width is, run the vertical pass first"; the order changes the rounding
    return not (h - oh > 0 and h - oh > (w - ow) * 2)


def resize(grey: np.ndarray, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Image.resize((w, h), LANCZOS) of an 'L' image (as a float64 (h, w) array) for
    each size, as uint8 arrays equal to Pillow's. The horizontal passes of all sizes
    that start with one share a single matrix product."""
    h, w = grey.shape
    first = [(ow, oh) for ow, oh in sizes if ow != w and _horizontal_first(w, h, ow, oh)]
    # (K^T A^T)^T: the same product, ~10 % faster in OpenBLAS with the long side last
    shared = (weights(w, tuple(ow for ow, _ in first)).T @ grey.T).T if first else None
    if shared is not None:
        shared = _clip8(np.ascontiguousarray(shared))
    out, at = [], 0
    for ow, oh in sizes:
        if (ow, oh) in first:
            part = shared[:, at:at + ow]
            at += ow
            if oh != h:
                part = _clip8(weights(h, (oh,)).T @ part)
        else:
            part = grey
            if oh != h:
                part = _clip8(weights(h, (oh,)).T @ part)
            if ow != w:
                part = _clip8(part @ weights(w, (ow,)))
        out.append(part.astype(np.uint8))
    return out


@lru_cache(maxsize=1)
def matches_pillow() -> bool:
    """Whether resize() equals the installed Pillow's on images that take both pass
    orders, a shrink, a stretch and an unchanged side (once per process): a Pillow
    that changed its resampling makes the hashes fall back to imagehash itself."""
    from PIL import Image

    rng = np.random.default_rng(15)
    for w, h in ((683, 1024), (1024, 683), (300, 900), (40, 7), (9, 32), (32, 32)):
        a = rng.integers(0, 256, (h, w), dtype=np.uint8)
        im = Image.fromarray(a, "L")
        sizes = [(32, 32), (9, 8)]
        for got, size in zip(resize(a.astype(np.float64), sizes), sizes, strict=True):
            if not np.array_equal(got, np.asarray(im.resize(size, Image.Resampling.LANCZOS))):
                return False
    return True
