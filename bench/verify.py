"""verify's costs: the next batch of 10,000 (an index seek at any size) and files/s without --hash.

    python bench/verify.py --big /var/tmp/big.db            # a bench/bigdb.py database
    python bench/verify.py --big /var/tmp/big.db --files 50000

Part 1 times verify's two walks on a big database (bench/bigdb.py): never-checked
images from the middle of a pass, then the oldest-checked ones once every saved image
has a check, and the write of one batch's last_checked. The baseline is a lookup
of 10,000 rows by rowid in the same database (the cheapest read of that many rows).
Part 2 runs the verify stage (stat and size only) over a tree of sparse files on
local disk, against a bare os.stat loop over the same files (the ceiling).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bigdb  # noqa: E402

from download_db.db import connection, upkeep  # noqa: E402
from download_db.upkeep.verify import VerifyConfig, run_verify  # noqa: E402

BATCH = 10_000


def _best(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_queries(db: Path) -> None:
    conn = connection.connect(db)
    n = conn.execute("SELECT max(image_id) FROM images").fetchone()[0]
    saved = conn.execute("SELECT coalesce(sum(n), 0) FROM image_tally WHERE status = 'success'"
                         ).fetchone()[0]
    print(f"database: {db} ({n:,} images, {saved:,} saved, "
          f"{db.stat().st_size / 1e9:.1f} GB)")
    mid = n // 2
    ids = list(range(mid, mid + BATCH))
    base = _best(lambda: conn.execute(
        "SELECT image_id, gbif_id, file_path, file_size, sha256 FROM images "
        "WHERE image_id IN (SELECT value FROM json_each(?))", (str(ids),)).fetchall())
    print(f"  baseline: {BATCH:,} rows by rowid                     {base * 1e3:8.1f} ms")
    now = time.time()
    never = _best(lambda: upkeep.to_check(conn, now, BATCH, after=mid))
    print(f"  never-checked batch of {BATCH:,} (mid-pass)         {never * 1e3:8.1f} ms"
          f"  ({never / base:.2f}x baseline)")
    # every saved image checked once, at spread-out times: the oldest walk
    t0 = time.perf_counter()
    with connection.transaction(conn):
        conn.execute("UPDATE images SET last_checked = ? - (image_id % 100000) "
                     "WHERE status = 'success' AND last_checked IS NULL", (now - 86400,))
    print(f"  (stamping every saved image took {time.perf_counter() - t0:.0f}s)")
    older = _best(lambda: upkeep.to_check(conn, now, BATCH))
    print(f"  oldest-checked batch of {BATCH:,}                   {older * 1e3:8.1f} ms"
          f"  ({older / base:.2f}x baseline)")
    tail = _best(lambda: upkeep.to_check(conn, now - 86400 - 99_990, BATCH))
    print(f"  last batch of a pass (few rows before the cutoff) {tail * 1e3:8.1f} ms")
    batch = [r.image_id for r in upkeep.to_check(conn, now, BATCH)]

    def stamp() -> None:
        with connection.transaction(conn):
            upkeep.mark_checked(conn, batch, time.time())
    write = _best(stamp, 3)
    print(f"  mark_checked of {BATCH:,} (one transaction)         {write * 1e3:8.1f} ms")
    conn.close()


def bench_files(n_images: int, threads: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-verify-", dir="/var/tmp"))
    try:
        db = tmp / "v.db"
        root = tmp / "images"
        print(f"building {n_images:,} images and sparse files under {tmp} ...", flush=True)
        bigdb.build(db, n_images)
        conn = connection.connect(db)
        paths = []
        for rel, size in conn.execute("SELECT file_path, file_size FROM images "
                                      "WHERE status = 'success'"):
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "wb") as f:
                f.truncate(size)  # sparse: the recorded size, no blocks written
            paths.append(str(p))
        conn.close()
        os.sync()
        for p in paths:  # warm the inode cache for both contenders alike
            os.stat(p)
        t0 = time.perf_counter()
        for p in paths:
            os.stat(p)
        bare = time.perf_counter() - t0
        print(f"  baseline: bare os.stat loop      {len(paths) / bare:>10,.0f} files/s")
        for t in sorted({1, threads}):
            cfg = VerifyConfig(db=db, install_path=root, threads=t, bar=False,
                               progress_every=3600)
            with open(os.devnull, "w") as quiet:
                st = run_verify(cfg, out=quiet)
            assert st.checked == len(paths) and not st.requeued, st
            rate = st.checked / st.seconds
            print(f"  verify (size only), {t} thread(s) {rate:>10,.0f} files/s  "
                  f"({rate * bare / len(paths):.2f}x bare stat)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big", type=Path, help="a bench/bigdb.py database (it is modified)")
    ap.add_argument("--files", type=int, default=50_000, help="images in the file benchmark")
    ap.add_argument("--threads", type=int, default=8)
    a = ap.parse_args()
    if a.big:
        bench_queries(a.big)
    if a.files:
        bench_files(a.files, a.threads)


if __name__ == "__main__":
    main()
