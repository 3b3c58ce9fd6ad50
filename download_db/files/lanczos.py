"""Pillow's LANCZOS resize of a grey image, bit for bit, as float64 matrix products (pure)."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

# Pillow (libImaging/Resample.c, 8 bits per channel): the weights of each output pixel
# are computed in double, normalised, and rounded to integers with 22 fraction bits;
# each pass sums pixel * weight in an int from 1 << 21 and keeps clip(sum >> 22, 0, 255).
# Those sums, and any part of them, are integers below 2^40, so float64 matrix
# products (BLAS, any order, with or without FMA) give exactly Pillow's sums, for
# all the columns of both hashes in one pass instead of Pillow's per-pixel loops.
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


# The filters are bands: a 32-pixel output of a 683-pixel side reads 128 inputs,
# so a dense product spends 80 % of its multiplies on zeros. Cutting the input
# side into blocks and multiplying each by the output columns its rows reach
# skips most of them (the partial sums are integers too, so adding them is exact).
# One BLAS call and its additions cost about as much as this many multiply-adds: a
# guess within a flat optimum (at 1024 x 683, 4 to 18 blocks all took 0.8-0.9 ms
# against 1.3-1.5 ms for the dense product; pieces of 256 or 512 rows made the
# products faster and the additions slower, no gain), one core.
CALL_COST = 400_000
MAX_BLOCKS = 32

Block = tuple[int, int, tuple[tuple[int, int], ...], np.ndarray]


@lru_cache(maxsize=256)
def blocks(in_size: int, outs: tuple[int, ...], m: int) -> tuple[Block, ...]:
    """The product K^T X of weights(in_size, outs) with an (in_size, m) X as blocks
    (a, b, spans, k): rows a:b of X times k gives the output rows in spans (one
    range of columns of K per size in outs), the number of blocks chosen for the
    fewest multiply-adds plus CALL_COST per block."""
    k = weights(in_size, outs)
    nz = k != 0
    reach = nz.any(axis=0)
    first = np.where(reach, nz.argmax(axis=0), in_size)
    last = np.where(reach, in_size - 1 - nz[::-1].argmax(axis=0), -1)

    # every candidate number of blocks at once (a miss, i.e. a new image size, costs
    # ~0.2 ms instead of ~1 ms for a loop over the candidates)
    counts = np.arange(1, min(MAX_BLOCKS, in_size) + 1)
    cuts = [np.linspace(0, in_size, n + 1).round().astype(int) for n in counts.tolist()]
    a = np.concatenate([c[:-1] for c in cuts])[:, None]
    b = np.concatenate([c[1:] for c in cuts])[:, None]
    width = ((first < b) & (last >= a)).sum(axis=1)  # an upper bound of the span
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    macs = np.add.reduceat((b[:, 0] - a[:, 0]) * width, starts)
    e = cuts[int(np.argmin(macs * m + CALL_COST * counts))]
    out: list[Block] = []
    for lo_row, hi_row in zip(e[:-1].tolist(), e[1:].tolist(), strict=True):
        spans, at = [], 0
        for size in outs:
            cols = np.flatnonzero(nz[lo_row:hi_row, at:at + size].any(axis=0))
            if cols.size:
                spans.append((at + int(cols[0]), at + int(cols[-1]) + 1))
            at += size
        if spans:
            idx = np.concatenate([np.arange(lo, hi) for lo, hi in spans])
            kb = np.ascontiguousarray(k[lo_row:hi_row, idx].T)
            kb.flags.writeable = False
            out.append((lo_row, hi_row, tuple(spans), kb))
    return tuple(out)


def _pass(x: np.ndarray, outs: tuple[int, ...]) -> np.ndarray:
    """K^T x, clipped as Pillow clips a pass: (sum(outs), m) from an (in_size, m) x."""
    in_size, m = x.shape
    acc = np.zeros((sum(outs), m))
    for a, b, spans, kb in blocks(in_size, outs, m):
        part = kb @ x[a:b]
        at = 0
        for lo, hi in spans:
            acc[lo:hi] += part[at:at + hi - lo]
            at += hi - lo
    return _clip8(acc)


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
    that start with one share a single pass over the image."""
    h, w = grey.shape
    first = [(ow, oh) for ow, oh in sizes if ow != w and _horizontal_first(w, h, ow, oh)]
    # (sum(ow), h): each size's horizontal pass, transposed (the layout the blocks give)
    shared = _pass(grey.T, tuple(ow for ow, _ in first)) if first else grey
    out, at = [], 0
    for ow, oh in sizes:
        if (ow, oh) in first:
            part = shared[at:at + ow]
            at += ow
            part = _pass(part.T, (oh,)) if oh != h else part.T
        else:
            part = _pass(grey, (oh,)) if oh != h else grey
            if ow != w:
                part = _pass(part.T, (ow,)).T
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
