#!/usr/bin/env python3
"""Near-duplicate grouping at scale: the multi-band index vs all pairs, on synthetic pHashes.

    python bench/dedupe.py [--sizes 2e6,4e6,8e6,16e6,50e6] [--k 3] [--workers 2]

  index      identity.groups.near_pairs over N uniform random 64-bit hashes with N/1000
             planted near copies at distances 0..k: seconds and recall of the planted
             pairs (must be 100 %), for each N, in one process and (--workers W > 1) with
             the keys in W processes (same pairs); the number of bands the cost model
             chose; the load average (the machine is shared) and the peak RSS
  all pairs  the baseline: every pair compared (vectorised), timed on 20,000 hashes in
             the same run and scaled to each N (it is exactly quadratic)
  crops      identity.crops.crop_links over N images' edge hashes (4 edges x 2 uniform
             random words) with N/1000 planted crops: one edge of the copy keeps the
             original's words up to crops.EDGE_DISTANCE / CHECK_DISTANCE flipped bits,
             the rest is new. Seconds, recall of the planted crops (must be 100 %), and
             the pairs beyond them; then index + crops, what dedupe computes
  read       SELECT image_id, phash (db.identity.hashed) and image_id, edge_hashes
             (db.identity.edge_hashed) of saved rows from a SQLite images-shaped table,
             1M rows: rows/s, scaled to 50M

Target (issue 15, a benchmark): <= 10 minutes for 50M hashes on 2 cores, 100 % recall.
50M is measured, not extrapolated: the cost model changes the number of bands with N.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from download_db.db import identity  # noqa: E402
from download_db.files import edgehash  # noqa: E402
from download_db.identity import crops, groups  # noqa: E402

TARGET_N = 50_000_000


def _flips(n_pairs: int, most: int, rng: np.random.Generator) -> np.ndarray:
    """A mask of 0..most random bits for each pair."""
    masks = np.zeros(n_pairs, np.uint64)
    for p in range(n_pairs):
        for bit in rng.choice(64, size=int(rng.integers(0, most + 1)), replace=False):
            masks[p] |= np.uint64(1) << np.uint64(int(bit))
    return masks


def planted_hashes(n: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, set]:
    h = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    n_pairs = max(n // 1000, 1)
    idx = rng.choice(n, size=2 * n_pairs, replace=False)
    src, dst = idx[:n_pairs], idx[n_pairs:]
    h[dst] = h[src] ^ _flips(n_pairs, k, rng)
    planted = {(min(a, b), max(a, b)) for a, b in zip(src.tolist(), dst.tolist(), strict=True)}
    return h.view(np.int64), planted


def planted_crops(n: int, rng: np.random.Generator) -> tuple[np.ndarray, set]:
    e = rng.integers(1, 2**64, size=(n, len(edgehash.EDGES), 2), dtype=np.uint64)
    n_pairs = max(n // 1000, 1)
    idx = rng.choice(n, size=2 * n_pairs, replace=False)
    src, dst = idx[:n_pairs], idx[n_pairs:]
    edge = rng.integers(0, len(edgehash.EDGES), size=n_pairs)
    e[dst, edge, 0] = e[src, edge, 0] ^ _flips(n_pairs, crops.EDGE_DISTANCE, rng)
    e[dst, edge, 1] = e[src, edge, 1] ^ _flips(n_pairs, crops.CHECK_DISTANCE, rng)
    return e, {(min(a, b), max(a, b)) for a, b in zip(src.tolist(), dst.tolist(), strict=True)}


def all_pairs_rate(n: int = 20_000) -> float:
    """Pair comparisons per second of the plain all-pairs loop (rows against the rest)."""
    h = np.random.default_rng(0).integers(0, 2**64, size=n, dtype=np.uint64)
    t0 = time.perf_counter()
    for i in range(n - 1):
        groups.popcount(h[i + 1:] ^ h[i]) <= 3  # noqa: B015 - the work being timed
    return n * (n - 1) / 2 / (time.perf_counter() - t0)


def read_rate(n: int = 1_000_000) -> tuple[float, float]:
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
        assert len(ids) == n
        conn.execute("ALTER TABLE images ADD COLUMN edge_hashes BLOB")
        conn.execute("UPDATE images SET edge_hashes = randomblob(?)", (edgehash.SIZE,))
        conn.commit()
        t0 = time.perf_counter()
        ids, _ = identity.edge_hashed(conn)
        dt_edges = time.perf_counter() - t0
        conn.close()
        assert len(ids) == n
        return n / dt, n / dt_edges


def load() -> str:
    return "load " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def peak_mib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024


def timed(h: np.ndarray, k: int, workers: int) -> tuple[float, set]:
    t0 = time.perf_counter()
    x, y = groups.near_pairs(h, k, workers=workers)
    return time.perf_counter() - t0, set(zip(x.tolist(), y.tolist(), strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2e6,4e6,8e6")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--what", default="index,crops,read")
    a = ap.parse_args()
    sizes = [int(float(s)) for s in a.sizes.split(",")]
    rate = all_pairs_rate()
    print(f"all pairs (baseline): {rate / 1e6:,.0f}M comparisons/s -> 50M hashes would take "
          f"{TARGET_N**2 / 2 / rate / 86400:,.0f} days ({load()})")
    rng = np.random.default_rng(7)
    index_s: dict[int, float] = {}
    for n in sizes if "index" in a.what else []:
        h, planted = planted_hashes(n, a.k, rng)
        brute = n * (n - 1) / 2 / rate
        m = groups.band_count(n, a.k)
        found = None
        for w in sorted({1, a.workers}):
            dt, got = timed(h, a.k, w)
            if found is not None:
                assert got == found, "the processes found other pairs"
            found = got
            index_s[n] = dt
            recall = len(planted & found) / len(planted)
            print(f"index k={a.k} ({m} bands, {math.comb(m, a.k)} keys), N={n:>11,}, "
                  f"{w} process{'es' if w > 1 else ''}: {dt:7.1f} s, {len(found):,} pairs "
                  f"within {a.k}, recall of {len(planted):,} planted {100 * recall:.1f} %; "
                  f"all pairs at this N: {brute:,.0f} s ({brute / dt:,.0f}x); "
                  f"peak RSS {peak_mib():,.0f} MiB ({load()})", flush=True)
        del h
    for n in sizes if "crops" in a.what else []:
        e, planted = planted_crops(n, rng)
        t0 = time.perf_counter()
        x, y = crops.crop_links(e, workers=a.workers)
        dt = time.perf_counter() - t0
        del e
        found = set(zip(x.tolist(), y.tolist(), strict=True))
        recall = len(planted & found) / len(planted)
        total = f"; with the pHash index {index_s[n] + dt:,.1f} s" if n in index_s else ""
        print(f"crops (4 edges, k={crops.EDGE_DISTANCE}, check {crops.CHECK_DISTANCE}), "
              f"N={n:>11,}, {a.workers} processes: {dt:7.1f} s, recall of {len(planted):,} "
              f"planted {100 * recall:.1f} %, {len(found - planted):,} other pairs{total}; "
              f"peak RSS {peak_mib():,.0f} MiB ({load()})", flush=True)
    if "read" in a.what:
        rr, re_ = read_rate()
        print(f"reading 50M hashes from SQLite: {TARGET_N / rr / 60:,.1f} min ({rr:,.0f} rows/s)"
              f"; 50M edge hashes: {TARGET_N / re_ / 60:,.1f} min ({re_:,.0f} rows/s)")
    print("Target: <= 10 min for 50M on 2 cores, 100 % recall.")


if __name__ == "__main__":
    main()
