"""Near-duplicate groups from 64-bit hashes: banded index, never all pairs (pure, numpy)."""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from itertools import combinations
from math import comb

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

BITS = 64
# Cost model that picks the number of bands (measured by bench/dedupe.py on the
# reference machine): nanoseconds per distinct hash to permute, sort and scan one
# key, and per comparison of two hashes in one bucket.
KEY_NS = 70.0
COMPARE_NS = 3.0
MAX_KEYS = 64  # more keys than this are never cheaper than the bigger buckets of fewer
# Below this share of rows with a bucket mate left, the live rows are gathered
# instead of comparing whole shifted slices.
DENSE_FRACTION = 8
_POP16 = np.array([bin(i).count("1") for i in range(1 << 16)], dtype=np.uint8)
Field = tuple[int, int]  # (shift, width) of a run of bits of the hash


def bands(k: int, m: int | None = None) -> list[Field]:
    """(shift, width) of m bands (default k+1) covering the 64 bits; widths differ
    by at most one bit. Two hashes within distance k differ in at most k bands, so
    they agree exactly on at least m - k of them (pigeonhole)."""
    m = k + 1 if m is None else m
    if not 0 <= k < BITS or not k < m <= BITS:
        raise ValueError(f"distance {k} must be between 0 and {BITS - 1}, bands {m} above it")
    widths = [BITS // m + (1 if i < BITS % m else 0) for i in range(m)]
    out, shift = [], 0
    for w in widths:
        out.append((shift, w))
        shift += w
    return out


def band_count(n: int, k: int) -> int:
    """The number of bands m that makes the index cheapest for n distinct hashes.
    Each of the C(m, k) keys (m - k bands side by side) is one sort; wider keys
    mean smaller buckets: C(m, k) * (n * KEY_NS + n^2 / 2^(key bits + 1) * COMPARE_NS)."""
    best, best_cost = k + 1, float("inf")
    for m in range(k + 1, BITS + 1):
        if comb(m, k) > MAX_KEYS and m > k + 1:
            break
        key_bits = (m - k) * (BITS // m)
        cost = comb(m, k) * (n * KEY_NS + n * n / 2.0 ** (key_bits + 1) * COMPARE_NS)
        if cost < best_cost:
            best, best_cost = m, cost
    return best


def keys(k: int, m: int) -> list[tuple[list[Field], int]]:
    """Every key of the index: (fields, key bits). A key is m - k bands moved to the
    top of the hash, the other bits below them; fields list the runs of the hash in
    their new order from the top. Any pair within k agrees on all bands of one key.
    Moving bits around keeps Hamming distances, so the permuted hashes compare as is."""
    bs = bands(k, m)
    out = []
    for chosen in combinations(range(m), m - k):
        order = sorted(chosen, reverse=True) + [i for i in range(m - 1, -1, -1)
                                                if i not in chosen]
        fields: list[Field] = []
        for i in order:
            shift, width = bs[i]
            if fields and fields[-1][0] == shift + width:  # right below the last: one run
                fields[-1] = (shift, fields[-1][1] + width)
            else:
                fields.append((shift, width))
        out.append((fields, sum(bs[i][1] for i in chosen)))
    return out


def popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (numpy 2's ufunc where present: 5x the lookups)."""
    x = x.astype(np.uint64, copy=False)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    m = np.uint64(0xFFFF)
    return (_POP16[x & m].astype(np.uint8) + _POP16[(x >> np.uint64(16)) & m]
            + _POP16[(x >> np.uint64(32)) & m] + _POP16[x >> np.uint64(48)])


def _permute(h: np.ndarray, fields: list[Field], out: np.ndarray, chunk: int) -> None:
    """out = h with its runs of bits in the order of fields, top first. In chunks
    that stay in cache: four in-place passes per field."""
    tmp = np.empty(min(chunk, len(h)), np.uint64)
    for lo in range(0, len(h), chunk):
        src, dst, t = h[lo:lo + chunk], out[lo:lo + chunk], tmp[:min(chunk, len(h) - lo)]
        pos = BITS
        for n, (shift, width) in enumerate(fields):
            pos -= width
            np.right_shift(src, np.uint64(shift), out=t)
            if shift + width < BITS:
                np.bitwise_and(t, np.uint64((1 << width) - 1), out=t)
            if pos:
                np.left_shift(t, np.uint64(pos), out=t)
            if n:
                np.bitwise_or(dst, t, out=dst)
            else:
                dst[:] = t


def _unpermute(v: np.ndarray, fields: list[Field]) -> np.ndarray:
    out, pos = np.zeros(len(v), np.uint64), BITS
    for shift, width in fields:
        pos -= width
        out |= ((v >> np.uint64(pos)) & np.uint64((1 << width) - 1)) << np.uint64(shift)
    return out


def _key_pairs(u: np.ndarray, fields: list[Field], key_bits: int, k: int,
               chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of distinct hashes of u (as values) within distance k that agree on the
    key: sorted by the permuted value, a key's bucket is a run, and each row is
    compared with the row d places on, d = 1, 2, ... while its run reaches that far."""
    n = len(u)
    v = np.empty(n, np.uint64)
    _permute(u, fields, v, chunk)
    v.sort()
    lim = np.uint64(1 << (BITS - key_bits)) if key_bits < BITS else np.uint64(1)
    kk = np.uint8(k)
    pa: list[np.ndarray] = [np.empty(0, np.uint64)]
    pb: list[np.ndarray] = [np.empty(0, np.uint64)]
    live: np.ndarray | None = None  # None: every row (dense slices)
    alive, d = n, 1
    while d < n and alive:
        if live is None:
            # while many rows have a mate d on, contiguous slices (no gathers) are
            # ~10x cheaper per comparison; the pass that sees few left collects them
            collect = alive * DENSE_FRACTION <= n
            parts, alive = [], 0
            for lo in range(0, n - d, chunk):
                hi = min(lo + chunk, n - d)
                x = v[lo:hi] ^ v[lo + d:hi + d]
                near = np.flatnonzero(popcount(x) <= kk)
                if len(near):
                    pa.append(v[near + lo])
                    pb.append(v[near + lo + d])
                same = x < lim
                if collect:
                    parts.append(np.flatnonzero(same) + lo)
                else:
                    alive += int(np.count_nonzero(same))
            if collect:
                live = np.concatenate(parts) if parts else np.empty(0, np.int64)
                alive = len(live)
        else:
            live = live[live < n - d]
            keep = []
            for lo in range(0, len(live), chunk):
                i = live[lo:lo + chunk]
                x = v[i] ^ v[i + d]
                near = popcount(x) <= kk
                if near.any():
                    pa.append(v[i[near]])
                    pb.append(v[i[near] + d])
                keep.append(i[x < lim])
            live = np.concatenate(keep) if keep else live[:0]
            alive = len(live)
        d += 1
    a, b = np.concatenate(pa), np.concatenate(pb)
    return _unpermute(a, fields), _unpermute(b, fields)


# The distinct hashes a forked worker reads: inherited copy-on-write, never pickled.
_FORKED: np.ndarray | None = None


def _key_job(job: tuple[list[Field], int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    assert _FORKED is not None
    return _key_pairs(_FORKED, *job)


def _jobs(u: np.ndarray, k: int, m: int | None,
          chunk: int) -> list[tuple[list[Field], int, int, int]]:
    if k == 0 or len(u) < 2:  # distance 0: only equal hashes, found without keys
        return []
    m = band_count(len(u), k) if m is None else m
    return [(fields, key_bits, k, chunk) for fields, key_bits in keys(k, m)]


def near_pairs(hashes: np.ndarray, k: int, *, max_pairs: int = 1 << 20,
               workers: int = 1, m: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of indices whose hashes are within Hamming distance k (each pair
    once, a < b, sorted). Exact: no pair within k is missed, none beyond k is
    returned. ``m`` bands (default: the cheapest for the size, see band_count);
    ``max_pairs`` bounds the comparisons held at once. ``workers`` > 1: the keys run
    in forked processes (each needs about 9 bytes per distinct hash of its own, the
    caller about 25 per hash). c copies of one hash give c(c-1)/2 pairs: for groups,
    near_links gives the same components with c-1."""
    s, order, va, vb = value_pairs(hashes, k, max_pairs, workers, m)
    a1, b1 = expand(s, order, va, vb)
    a2, b2 = equal_pairs(s, order)
    return _sorted_pairs(np.concatenate([a1, a2]), np.concatenate([b1, b2]))


def near_links(hashes: np.ndarray, k: int, *, max_pairs: int = 1 << 20,
               workers: int = 1, m: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs whose connected components are those of near_pairs, in linear
    size: each copy of a hash linked to its first copy, and one link per pair of
    near distinct values. A placeholder shown 100,000 times is 99,999 links, not
    5e9 pairs."""
    s, order, va, vb = value_pairs(hashes, k, max_pairs, workers, m)
    if not len(s):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    start = np.r_[True, s[1:] != s[:-1]]
    run = np.cumsum(start) - 1
    first = order[np.flatnonzero(start)]  # the first copy of each distinct value
    copies = np.flatnonzero(~start)
    a = np.concatenate([first[run[copies]], order[np.searchsorted(s, va)]])
    b = np.concatenate([order[copies], order[np.searchsorted(s, vb)]])
    return _sorted_pairs(a, b)


def _sorted_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.minimum(a, b), np.maximum(a, b)
    by = np.lexsort((b, a))
    return a[by], b[by]


def value_pairs(hashes: np.ndarray, k: int, max_pairs: int, workers: int,
                 m: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(the hashes sorted, their indices, va, vb): each pair of distinct hash values
    within distance k once, va < vb."""
    global _FORKED
    h = np.asarray(hashes).astype(np.int64, copy=False).view(np.uint64)
    n = len(h)
    none = np.empty(0, np.uint64)
    if n < 2:
        return h.copy(), np.arange(n, dtype=np.int64), none, none
    pool = None
    if workers > 1 and k > 0 and "fork" in mp.get_all_start_methods():
        s = np.sort(h)  # the distinct hashes first, so the workers can start ...
        u = s[np.r_[True, s[1:] != s[:-1]]]
        jobs = _jobs(u, k, m, max_pairs)
        if len(jobs) > 1:
            _FORKED = u
            pool = ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("fork"))
            try:
                pending = pool.map(_key_job, jobs)
            finally:
                _FORKED = None
        try:
            order = np.argsort(h)  # ... while this runs (needed to name the indices)
            found = list(pending) if pool is not None else [_key_pairs(u, *j) for j in jobs]
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    else:
        order = np.argsort(h)
        s = h[order]
        u = s[np.r_[True, s[1:] != s[:-1]]]  # each distinct hash once
        found = [_key_pairs(u, *job) for job in _jobs(u, k, m, max_pairs)]
    del u
    va = np.concatenate([none] + [np.minimum(x, y) for x, y in found])
    vb = np.concatenate([none] + [np.maximum(x, y) for x, y in found])
    if len(va):  # a pair agreeing on several keys was found by each
        va, vb = np.unique(np.stack([va, vb], axis=1), axis=0).T
    return s, order, va, vb


def expand(s: np.ndarray, order: np.ndarray, va: np.ndarray,
            vb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs of near value pairs: every copy of one value with every copy of
    the other (s: the hashes sorted, order: their indices)."""
    sa, sb = np.searchsorted(s, va), np.searchsorted(s, vb)
    ca = np.searchsorted(s, va, side="right") - sa
    cb = np.searchsorted(s, vb, side="right") - sb
    per = ca * cb
    pair = np.repeat(np.arange(len(va)), per)
    r = np.arange(len(pair)) - np.repeat(np.cumsum(per) - per, per)
    return order[sa[pair] + r // cb[pair]], order[sb[pair] + r % cb[pair]]


def equal_pairs(s: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs of equal hashes (distance 0): each run of s with every later
    member of it."""
    a: list[np.ndarray] = [np.empty(0, np.int64)]
    b: list[np.ndarray] = [np.empty(0, np.int64)]
    live, d = np.flatnonzero(s[1:] == s[:-1]), 1
    while len(live):
        a.append(order[live])
        b.append(order[live + d])
        d += 1
        live = live[live < len(s) - d]
        live = live[s[live + d] == s[live]]
    return np.concatenate(a), np.concatenate(b)


def group_ids(ids: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[int, int]:
    """Connected components of the pairs (index pairs into ids) -> {id: group id} for
    every id in a group of two or more; the group id is the smallest id in it."""
    if not len(a):
        return {}
    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    n = len(nodes)
    graph = coo_matrix((np.ones(len(a), np.int8), (inv[:len(a)], inv[len(a):])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    member_ids = np.asarray(ids)[nodes]
    first = np.full(labels.max() + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, labels, member_ids)
    return dict(zip(member_ids.tolist(), first[labels].tolist(), strict=True))
