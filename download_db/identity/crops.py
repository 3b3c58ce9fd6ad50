"""Crop links: saved images that lost a strip of one edge, found by their edge hashes (pure)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..files.edgehash import EDGES
from . import groups

# Bits the indexed (low) words of one edge may differ in, and the checked (next
# band) words. Chosen by tests/test_dedupe.py on the shipped sheets: every crop of
# 2-25 % of one edge, at full size or shrunk to 0.35-0.8, at quality 50-95, keeps the
# opposite edge's words within 2 and 4 bits (a margin of 2 each); the two different
# sheets are 16-28 apart on every edge. k = 4 keeps the index's keys 21 bits wide
# (bench/dedupe.py); k = 5 would need 21 keys of 18 bits, about four times the work.
EDGE_DISTANCE = 4
CHECK_DISTANCE = 6
# An edge region shared by more images than this is a template (a blank margin, a
# label under the same glass), not a crop: its pairs are not expanded. Exact copies
# of one file are linked by their equal pHash anyway.
MAX_COPIES = 64


def crop_links(edges: np.ndarray, *, k: int = EDGE_DISTANCE, check: int = CHECK_DISTANCE,
               max_copies: int = MAX_COPIES, workers: int = 1,
               after_edge: Callable[[], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs (a < b, sorted) of ``edges`` ((n, len(EDGES), 2) uint64, edgehash.unpack)
    whose region along one edge shows the same picture: the low words within ``k``
    bits (the banded index, never all pairs) and the next band within ``check``.
    Regions with no hash (flat, or zero) take no part. ``after_edge`` runs after each
    edge (a stop check: it may raise)."""
    pa: list[np.ndarray] = [np.empty(0, np.int64)]
    pb: list[np.ndarray] = [np.empty(0, np.int64)]
    for e in range(len(EDGES)):
        low, mid = edges[:, e, 0], edges[:, e, 1]
        rows = np.flatnonzero(low != 0)
        if len(rows) < 2:
            continue
        s, order, va, vb = groups.value_pairs(low[rows].view(np.int64), k, 1 << 20, workers,
                                              None)
        a1, b1 = _capped_pairs(s, order, va, vb, max_copies)
        a, b = rows[a1], rows[b1]
        keep = groups.popcount(mid[a] ^ mid[b]) <= check
        pa.append(a[keep])
        pb.append(b[keep])
        if after_edge is not None:
            after_edge()
    a, b = np.concatenate(pa), np.concatenate(pb)
    if not len(a):
        return a, b
    a, b = np.minimum(a, b), np.maximum(a, b)
    pairs = np.unique(np.stack([a, b], axis=1), axis=0)  # one pair matched on two edges
    return pairs[:, 0], pairs[:, 1]


def _capped_pairs(s: np.ndarray, order: np.ndarray, va: np.ndarray, vb: np.ndarray,
                  max_copies: int) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs of near distinct values and of equal values, leaving out values
    held by more than max_copies rows (s: the values sorted, order: their rows)."""
    if not len(s):
        return order[:0], order[:0]
    run = np.cumsum(np.r_[True, s[1:] != s[:-1]]) - 1
    small = np.bincount(run)[run] <= max_copies
    s, order = s[small], order[small]  # whole runs go: the runs stay contiguous
    if len(va):
        known = _member(va, s) & _member(vb, s)
        va, vb = va[known], vb[known]
    a1, b1 = groups.expand(s, order, va, vb)
    a2, b2 = groups.equal_pairs(s, order)
    return np.concatenate([a1, a2]), np.concatenate([b1, b2])


def _member(v: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Whether each value of v is in the sorted s."""
    pos = np.minimum(np.searchsorted(s, v), max(len(s) - 1, 0))
    return s[pos] == v if len(s) else np.zeros(len(v), bool)
