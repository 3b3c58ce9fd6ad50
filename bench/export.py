#!/usr/bin/env python3
"""Export benchmark: manifest rows/s at scale, against a baseline measured in the same run.

    python bench/export.py --images 20000000 --workdir /var/tmp/exportbench

Builds (or reuses) a database with bench/bigdb.py's generator (73.5% of images saved) and
fills the occurrences table (50 datasets) as an ingest of the DwC-A would. Then, on the
same database:

* baseline: the export's own keyset-paged query, read with a bare ``fetchall`` loop (SQLite
  and the sqlite3 module's tuples: the floor of any export through Python);
* export: ``run_export`` to Parquet (Arrow conversion, licence mapping, record counting,
  zstd Parquet, derived_dataset.csv and CITATION.txt), then to CSV.

Target (issue 14): >= 500k rows/s at 50M rows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bigdb  # noqa: E402

from download_db.db import connection, occurrences  # noqa: E402
from download_db.export import manifest  # noqa: E402
from download_db.export.stage import run_export  # noqa: E402

DATASETS = 50
# One statement: a realistic UUID-shaped datasetKey per record, as occurrence.txt gives them.
_FILL = f"""
INSERT INTO occurrences(gbif_id, dataset_key, occurrence_id, institution_code)
SELECT gbif_id, printf('%08x-4755-430f-9eab-%012x', gbif_id % {DATASETS}, gbif_id % {DATASETS}),
       printf('urn:catalog:HERB:%d', gbif_id), printf('INST%d', gbif_id % {DATASETS})
  FROM gbif_ids
"""


def prepare(db: Path, images: int) -> None:
    if not db.exists():
        bigdb.build(db, images)
    conn = connection.connect(db)
    try:
        conn.execute(occurrences.DDL)
        if conn.execute("SELECT count(*) FROM occurrences").fetchone()[0] == 0:
            t = time.monotonic()
            with connection.transaction(conn):
                conn.execute(_FILL)
            print(f"  occurrences filled in {time.monotonic() - t:.0f}s", flush=True)
    finally:
        conn.close()


def baseline(db: Path) -> tuple[int, float]:
    """The export's query, pages read with fetchall and thrown away."""
    conn = connection.open_readonly(db)
    try:
        f = manifest.make_filters()
        src = manifest.prepare(conn, f)
        sql = manifest.query(f, src)
        plan = " / ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql,
                                                     {"g": 0, "n": 0}))
        print(f"  plan: {plan}", flush=True)
        t = time.monotonic()
        n, g, k = 0, -(2 ** 63), -1
        while True:
            rows = conn.execute(sql, {"g": g, "n": k}).fetchall()
            if not rows:
                break
            n += len(rows)
            g, k = rows[-1][0], rows[-1][1]
            if len(rows) < manifest.BATCH_ROWS:
                break
        return n, time.monotonic() - t
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20_000_000)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/exportbench"))
    a = ap.parse_args(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)
    db = a.workdir / f"big-{a.images}.db"
    print(f"database: {db} ({a.images:,} images)", flush=True)
    prepare(db, a.images)
    n, base_s = baseline(db)
    base = n / base_s
    print(f"baseline (same query, bare fetchall): {n:,} rows in {base_s:.1f}s = "
          f"{base:,.0f} rows/s", flush=True)
    for name in ("manifest.parquet", "manifest.csv"):
        out = a.workdir / name
        t = time.monotonic()
        s = run_export(db, out)
        secs = time.monotonic() - t
        rate = s.images / secs
        print(f"export {out.suffix[1:]}: {s.images:,} rows ({s.records:,} records, "
              f"{s.datasets} datasets) in {secs:.1f}s = {rate:,.0f} rows/s, "
              f"{rate / base:.2f}x baseline, {out.stat().st_size / 1e9:.2f} GB "
              f"(target >= 500,000 rows/s: {'met' if rate >= 500_000 else 'NOT met'})",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
