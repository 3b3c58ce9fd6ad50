#!/usr/bin/env python3
"""Perceptual hashing cost, against baselines measured in the same run.

    python bench/hashing.py [--repeat 40] [--backfill 400]

  resize     images.convert() of the shipped herbarium sheets (1400x2100 JPEGs) to 1024 px,
             with the pHash/dHash the downloader computes vs the same call without them
             (files.phash.hashes replaced by a no-op): the overhead in %
  backfill   `gbif-download-db hash` (one process, --workers 1) over N saved 1024 px JPEGs
             in a temporary database: images/s per core, and the decode-only baseline
             (Image.open + load of the same files) it cannot beat

Targets (issue 15, benchmarks not tests): hashing adds <= 10 % to the resize;
the backfill reads >= 200 images/s per core from local disk.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from download_db.cli.main import init_main  # noqa: E402
from download_db.files import images, phash  # noqa: E402
from download_db.files.layout import image_relpath  # noqa: E402
from download_db.identity.backfill import HashConfig, run_hash  # noqa: E402

SHEETS = sorted((ROOT / "tests" / "data" / "images").glob("herbarium_sheet_*.jpg"))


def _time_convert(blobs: list[bytes], repeat: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        for b in blobs:
            images.convert(b)
    return (time.perf_counter() - t0) / (repeat * len(blobs))


def bench_resize(repeat: int) -> None:
    blobs = [p.read_bytes() for p in SHEETS]
    real = phash.hashes
    _time_convert(blobs, 2)  # warm up (imports, caches)
    with_hash, without = [], []
    for _ in range(3):  # interleaved, so drift hits both alike
        with_hash.append(_time_convert(blobs, repeat))
        phash.hashes = lambda im: (None, None)  # type: ignore[assignment,return-value]
        try:
            without.append(_time_convert(blobs, repeat))
        finally:
            phash.hashes = real
    w, wo = min(with_hash), min(without)
    print(f"resize to 1024 px: {wo * 1e3:.1f} ms/img without hashes, {w * 1e3:.1f} ms/img "
          f"with: hashing adds {100 * (w - wo) / wo:.1f} % (target <= 10 %)")


def bench_backfill(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        base = 3_300_000_000
        mm = d / "m.txt"
        mm.write_text("gbifID\ttype\tformat\tidentifier\n" + "".join(
            f"{base + i}\tStillImage\timage/jpeg\thttp://127.0.0.9/img/{i}.jpg\n"
            for i in range(n)))
        db = d / "d.db"
        assert init_main(["--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
        root = d / "images"
        outs = [images.convert(p.read_bytes()) for p in SHEETS]
        conn = sqlite3.connect(db)
        with conn:
            for i in range(n):
                rel = image_relpath(base + i, 0, "jpg")
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(outs[i % len(outs)].data)
                conn.execute("UPDATE images SET status = 'success', file_path = ? "
                             "WHERE gbif_id = ?", (rel, base + i))
        conn.close()
        files = sorted(root.rglob("*.jpg"))
        for f in files:  # page cache warm for both: "from local disk" after a first read
            f.read_bytes()
        t0 = time.perf_counter()
        for f in files:
            with Image.open(f) as im:
                im.load()
        decode = len(files) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        st = run_hash(HashConfig(db=db, install_path=root, bar=False, progress_every=1e9),
                      out=open("/dev/null", "w"))  # noqa: SIM115
        rate = st.hashed / (time.perf_counter() - t0)
        print(f"backfill of {st.hashed:,} saved 1024 px JPEGs, 1 process: {rate:,.0f} images/s "
              f"per core (target >= 200); decode alone: {decode:,.0f} images/s "
              f"({rate / decode:.2f}x of decode)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--backfill", type=int, default=400)
    a = ap.parse_args()
    bench_resize(a.repeat)
    bench_backfill(a.backfill)


if __name__ == "__main__":
    main()
