#!/usr/bin/env python3
"""Near-duplicate grouping at scale: the banded index vs all pairs, on synthetic pHashes.

    python bench/dedupe.py [--sizes 1e6,2e6,4e6,8e6] [--k 3] [--workers 2]

  banded     identity.groups.near_pairs over N uniform random 64-bit hashes with N/1000
             planted near copies at distances 0..k: seconds and recall of the planted
             pairs (must be 100 %), for each N; then the N^2 fit extrapolated to 50M;
             with --workers W > 1 also the bands in W processes at once (same pairs)
  all pairs  the baseline: every pair compared (vectorised), timed on 20,000 hashes and
             scaled to each N (it is exactly quadratic)
  read       SELECT image_id, phash of saved rows from a SQLite images-shaped table
             (db.identity.hashed, 1M rows): rows/s, scaled to 50M

Target (issue 15, a benchmark): <= 10 minutes for 50M hashes on 2 cores, 100 % recall.
The banded index's work is N log N sorting plus N^2 k+1 / 2^(64/(k+1)+1) candidate
comparisons, so the extrapolation fits both terms on the measured sizes.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from download_db.db import identity  # noqa: E402
from download_db.identity import groups  # noqa: E402

TARGET_N = 50_000_000


def planted_hashes(n: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, set]:
    h = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    n_pairs = max(n // 1000, 1)
    idx = rng.choice(n, size=2 * n_pairs, replace=False)
    src, dst = idx[:n_pairs], idx[n_pairs:]
    masks = np.zeros(n_pairs, np.uint64)
    for p in range(n_pairs):
        for bit in rng.choice(64, size=int(rng.integers(0, k + 1)), replace=False):
            masks[p] |= np.uint64(1) << np.uint64(int(bit))
    h[dst] = h[src] ^ masks
    planted = {(min(a, b), max(a, b)) for a, b in zip(src.tolist(), dst.tolist(), strict=True)}
    return h.view(np.int64), planted


def all_pairs_rate(n: int = 20_000) -> float:
    """Pair comparisons per second of the plain all-pairs loop (rows against the rest)."""
    h = np.random.default_rng(0).integers(0, 2**64, size=n, dtype=np.uint64)
    t0 = time.perf_counter()
    for i in range(n - 1):
        groups.popcount(h[i + 1:] ^ h[i]) <= 3  # noqa: B015 - the work being timed
    return n * (n - 1) / 2 / (time.perf_counter() - t0)


def read_rate(n: int = 1_000_000) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(Path(tmp) / "r.db")
        conn.execute("CREATE TABLE images (image_id INTEGER PRIMARY KEY, status TEXT, "
                     "sha256 TEXT, phash INTEGER, host_id INTEGER)")
        rng = np.random.default_rng(1)
        hs = rng.integers(-2**63, 2**63 - 1, size=n, dtype=np.int64).tolist()
        conn.executemany("INSERT INTO images VALUES (?, 'success', NULL, ?, ?)",
                         ((i + 1, h, i % 300) for i, h in enumerate(hs)))
        conn.commit()
        t0 = time.perf_counter()
        ids, _, _ = identity.hashed(conn)
        dt = time.perf_counter() - t0
        conn.close()
        assert len(ids) == n
        return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1e6,2e6,4e6,8e6")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()
    sizes = [int(float(s)) for s in a.sizes.split(",")]
    rate = all_pairs_rate()
    print(f"all pairs (baseline): {rate / 1e6:,.0f}M comparisons/s -> 50M hashes would take "
          f"{TARGET_N**2 / 2 / rate / 86400:,.0f} days")
    rng = np.random.default_rng(7)
    measured, measured_w = [], []
    for n in sizes:
        h, planted = planted_hashes(n, a.k, rng)
        t0 = time.perf_counter()
        x, y = groups.near_pairs(h, a.k)
        dt = time.perf_counter() - t0
        found = set(zip(x.tolist(), y.tolist(), strict=True))
        recall = len(planted & found) / len(planted)
        measured.append((n, dt))
        print(f"banded k={a.k}, N={n:>11,}: {dt:7.1f} s, {len(found):,} pairs within {a.k}, "
              f"recall of {len(planted):,} planted {100 * recall:.1f} %; all pairs at this N: "
              f"{n * (n - 1) / 2 / rate:,.0f} s ({n * (n - 1) / 2 / rate / dt:,.0f}x)")
        if a.workers > 1:
            t0 = time.perf_counter()
            x2, y2 = groups.near_pairs(h, a.k, workers=a.workers)
            dt2 = time.perf_counter() - t0
            assert set(zip(x2.tolist(), y2.tolist(), strict=True)) == found
            measured_w.append((n, dt2))
            print(f"    same N, bands in {a.workers} processes: {dt2:7.1f} s "
                  f"({dt / dt2:.2f}x the one-process time)")
    # fit t = a * N log N + b * N^2 on the measured points (least squares)
    ns = np.array([m[0] for m in measured], float)
    ts = np.array([m[1] for m in measured], float)
    basis = np.stack([ns * np.log2(ns), ns**2], axis=1)
    (ca, cb), *_ = np.linalg.lstsq(basis, ts, rcond=None)
    est = ca * TARGET_N * np.log2(TARGET_N) + cb * TARGET_N**2
    rr = read_rate()
    if measured_w:
        nw = np.array([m[0] for m in measured_w], float)
        tw = np.array([m[1] for m in measured_w], float)
        (wa, wb), *_ = np.linalg.lstsq(np.stack([nw * np.log2(nw), nw**2], axis=1), tw,
                                       rcond=None)
        est_w = wa * TARGET_N * np.log2(TARGET_N) + wb * TARGET_N**2
        print(f"extrapolated to 50M with {a.workers} processes: {est_w / 60:,.1f} min "
              f"for the pairs")
    print(f"extrapolated to 50M (fit a*N log N + b*N^2 on the sizes above, one core): "
          f"{est / 60:,.1f} min for the pairs, + {TARGET_N / rr / 60:,.1f} min reading 50M "
          f"hashes from SQLite ({rr:,.0f} rows/s). Target: <= 10 min on 2 cores.")


if __name__ == "__main__":
    main()
