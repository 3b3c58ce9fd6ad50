"""derive's speed: img/s per core making 512 px JPEGs from 1500x2000 originals (draft-mode decode).

    python bench/derive.py                 # 300 originals, 512 px, 1 and 2 processes

Part 1, one core, in memory: derive's shrink() (DCT-scaled draft decode, then the small
rest) against the baseline of a full decode + Lanczos resize + the same encode, timed in
the same run on the same bytes. Rates per core are images per CPU-second (the machine is
shared: wall-clock rates move with the load, CPU time does not); wall rates beside them.
Part 2, the derive stage end to end on local disk (read the database, read each file,
shrink, write under a temp name, rename), with 1 and with all processes. Originals come
from bench/make_corpus.py (herbarium-like, 1500x2000, q85).
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bigdb  # noqa: E402
import make_corpus  # noqa: E402
from PIL import Image  # noqa: E402

from download_db.db import connection  # noqa: E402
from download_db.upkeep.derive import DeriveConfig, run_derive, shrink  # noqa: E402

TARGET = 70.0  # img/s per core (the target)


def corpus(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        buf = io.BytesIO()
        make_corpus.render(i, 1, 1500, 2000).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def full_decode(data: bytes, max_size: int) -> bytes:
    im = Image.open(io.BytesIO(data)).convert("RGB")
    r = max_size / max(im.size)
    im = im.resize((round(im.width * r), round(im.height * r)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def bench_core(blobs: list[bytes], max_size: int) -> None:
    for fn, label in ((lambda d: full_decode(d, max_size), "baseline: full decode + Lanczos"),
                      (lambda d: shrink(d, max_size=max_size, quality=85), "derive's shrink()")):
        fn(blobs[0])  # warm up
        t0, c0 = time.perf_counter(), time.process_time()
        for d in blobs:
            fn(d)
        wall = len(blobs) / (time.perf_counter() - t0)
        rate = len(blobs) / (time.process_time() - c0)  # per CPU-second: load-independent
        print(f"  {label:<34} {rate:8.1f} img/s per core (CPU time; {wall:.1f} img/s wall)")
        if label.startswith("baseline"):
            base = rate
    print(f"  shrink / baseline: {rate / base:.2f}x; target {TARGET:g} img/s per core: "
          f"{'met' if rate >= TARGET else 'missed'}")


def _cpu() -> float:
    """CPU seconds of this process and its finished children (user + system)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def bench_stage(blobs: list[bytes], n_images: int, max_size: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-derive-", dir="/var/tmp"))
    try:
        db, root = tmp / "d.db", tmp / "originals"
        with open(os.devnull, "w") as quiet:
            sys.stdout, saved = quiet, sys.stdout
            try:
                bigdb.build(db, n_images)
            finally:
                sys.stdout = saved
        conn = connection.connect(db)
        rels = [r[0] for r in conn.execute("SELECT file_path FROM images "
                                           "WHERE status = 'success'")]
        conn.close()
        for i, rel in enumerate(rels):
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(blobs[i % len(blobs)])
        os.sync()
        cores = os.cpu_count() or 1
        for workers in sorted({1, cores}):
            out = tmp / f"out-{workers}"
            cfg = DeriveConfig(db=db, install_path=root, out=out, max_size=max_size,
                               workers=workers, bar=False, progress_every=3600)
            cpu0 = _cpu()
            with open(os.devnull, "w") as quiet:
                st = run_derive(cfg, out=quiet)
            cpu = _cpu() - cpu0
            rate = st.derived / st.seconds
            print(f"  stage, {workers} process(es): {st.derived:,} files in {st.seconds:.1f}s = "
                  f"{rate:.1f} img/s wall; {st.derived / cpu:.1f} img/s per core "
                  f"(CPU time of all processes: {cpu:.1f}s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60, help="distinct originals rendered")
    ap.add_argument("--images", type=int, default=400, help="images in the stage run")
    ap.add_argument("--max-size", type=int, default=512)
    a = ap.parse_args()
    blobs = corpus(a.n)
    kb = sum(map(len, blobs)) / len(blobs) / 1024
    print(f"{a.n} originals of 1500x2000 ({kb:.0f} KB on average) -> {a.max_size} px")
    bench_core(blobs, a.max_size)
    bench_stage(blobs, a.images, a.max_size)


if __name__ == "__main__":
    main()
