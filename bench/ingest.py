#!/usr/bin/env python3
"""Ingest benchmark: rows/s and peak RSS of init_download_db.py end to end, against
baselines measured in the same run.

    python bench/ingest.py --rows 1000000,10000000      # generates the inputs
    python bench/ingest.py --input multimedia.txt        # a real file

Baselines (same file, same machine, same run):
  parse floor  pyarrow streaming read of the 7 columns we use, nothing else: the
               speed no ingest can beat
  upstream     the replaced system's approach (pandas read_csv + per-row regex key
               + groupby/join + executemany), on the first --baseline-rows rows

Targets (issue 2): >= 300,000 input rows/s end to end at 10M rows; a 59M-row file in
<= 4 minutes; peak RSS <= 1 GiB and independent of N.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GiB = 1 << 30

_MEASURE = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
t = time.perf_counter()
{body}
dt = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"seconds": dt, "maxrss": rss,
                   "extra": extra}}))
"""

_OURS = r"""
from download_db.cli.main import init_main
code = init_main(["--db", {db!r}, "--multimedia", {mm!r}, "--reset", "--no-bar",
                  "--progress-every", "30"])
assert code == 0, code
from download_db.db.sqlite import sqlite3
c = sqlite3.connect({db!r})
extra = json.loads(c.execute("SELECT counts FROM runs ORDER BY run_id DESC").fetchone()[0])
"""

_FLOOR = r"""
import pyarrow as pa, pyarrow.csv as pacsv
cols = ["gbifID", "type", "format", "identifier", "license", "rightsHolder", "creator"]
types = {{c: pa.string() for c in cols}}
r = pacsv.open_csv({mm!r}, parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
                   convert_options=pacsv.ConvertOptions(include_columns=cols, column_types=types),
                   read_options=pacsv.ReadOptions(block_size=8 << 20))
n = 0
for b in r:
    n += b.num_rows
extra = {{"rows": n}}
"""

# The replaced system (upstream-system.md section 3): pandas, a per-row Python regex
# key, groupby + "\n".join, INSERT OR IGNORE in 200k-row batches.
_UPSTREAM = r"""
import re, sqlite3, pandas as pd, os
for s in ("", "-wal", "-shm"):
    if os.path.exists({db!r} + s): os.remove({db!r} + s)
df = pd.read_csv({mm!r}, sep="\t", usecols=["gbifID", "identifier"], dtype=str, quoting=3,
                 on_bad_lines="skip", nrows={nrows}).dropna()
df = df[df.gbifID.str.fullmatch(r"\d+")]
df["gbifID"] = df.gbifID.astype("int64")
tail = re.compile(r"/[^/]+/[^/]+/[-+0-9.!]+/(default|color|gray|bitonal)\.\w+$")
def key(u):
    u = u.strip()
    low = u.lower()
    for suf in ("/manifest", "/manifest.json"):
        if low.endswith(suf):
            return u[: -len(suf)]
    return tail.sub("", u)
df["k"] = [key(u) for u in df.identifier]
df = df.sort_values("gbifID", kind="stable")
df["image_no"] = (~df.duplicated(["gbifID", "k"])).groupby(df.gbifID).cumsum() - 1
g = df.groupby(["gbifID", "image_no"], sort=False).agg(urls=("identifier", "\n".join),
                                                       k=("k", "first"))
conn = sqlite3.connect({db!r})
conn.execute("PRAGMA journal_mode=OFF"); conn.execute("PRAGMA synchronous=OFF")
conn.execute("CREATE TABLE images (gbif_id INTEGER, image_no INTEGER, image_key TEXT, urls TEXT, "
             "status TEXT DEFAULT 'pending', PRIMARY KEY (gbif_id, image_no))")
rows = list(zip(g.index.get_level_values(0).tolist(), g.index.get_level_values(1).tolist(),
                g.k.tolist(), g.urls.tolist()))
for i in range(0, len(rows), 200_000):
    conn.executemany("INSERT OR IGNORE INTO images(gbif_id, image_no, image_key, urls) "
                     "VALUES (?,?,?,?)",
                     rows[i:i + 200_000])
    conn.commit()
conn.execute("CREATE INDEX s ON images(status)")
extra = {{"rows": int(len(df)), "images": len(rows)}}
"""


def measure(body: str) -> dict:
    code = _MEASURE.format(root=str(ROOT), body=body)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(64 << 20):
            n += chunk.count(b"\n")
    return n - 1  # header


def generate(rows: int, workdir: Path) -> Path:
    out = workdir / f"multimedia_{rows}.txt"
    if not out.exists():
        print(f"generating {rows:,} rows -> {out}", flush=True)
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "make_multimedia.py"),
                "--out",
                str(out),
                "--rows",
                str(rows),
                "--procs",
                "2",
                "--ips",
                "8",
            ],
            check=True,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--rows", default="1000000", help="comma-separated sizes to generate (default 1000000)"
    )
    ap.add_argument(
        "--input", type=Path, help="benchmark this multimedia.txt instead of generating"
    )
    ap.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "gbif_ingest_bench"
    )
    ap.add_argument(
        "--baseline-rows",
        type=int,
        default=1_000_000,
        help="rows for the upstream baseline (it is slow and memory-hungry)",
    )
    a = ap.parse_args(argv)
    a.workdir.mkdir(parents=True, exist_ok=True)
    inputs = [a.input] if a.input else [generate(int(n), a.workdir) for n in a.rows.split(",")]
    results = []
    for mm in inputs:
        lines = count_lines(mm)
        db = str(a.workdir / "bench.db")
        floor = measure(_FLOOR.format(mm=str(mm)))
        ours = measure(_OURS.format(db=db, mm=str(mm)))
        nrows = min(lines, a.baseline_rows)
        up = measure(_UPSTREAM.format(db=str(a.workdir / "upstream.db"), mm=str(mm), nrows=nrows))
        r_ours = lines / ours["seconds"]
        r_floor = lines / floor["seconds"]
        r_up = nrows / up["seconds"]
        results.append((mm, lines, ours, r_ours, r_floor, r_up, up))
        ing = ours["extra"]["ingest"]
        print(
            f"\n== {mm.name}: {lines:,} rows, {mm.stat().st_size / 1e9:.2f} GB -> "
            f"{ing['images']:,} images, {ing['skipped']:,} skipped"
        )
        print(
            f"  ours end to end      {ours['seconds']:8.1f} s  {r_ours:>10,.0f} rows/s  "
            f"peak RSS {ours['maxrss'] / 2**20:,.0f} MiB"
        )
        print(
            f"  parse floor (pyarrow){floor['seconds']:8.1f} s  {r_floor:>10,.0f} rows/s  "
            f"-> ours at {r_ours / r_floor:.0%} of the parse floor"
        )
        print(
            f"  upstream ({nrows:,} rows) {up['seconds']:6.1f} s  {r_up:>10,.0f} rows/s  "
            f"peak RSS {up['maxrss'] / 2**20:,.0f} MiB -> ours {r_ours / r_up:.1f}x faster"
        )
        print(f"  59M rows extrapolated: {59e6 / r_ours / 60:.1f} min (target <= 4)")
    print("\ntargets:")
    for _mm, lines, ours, r_ours, *_ in results:
        ok_rate = (
            "n/a (< 10M rows)" if lines < 10_000_000 else ("PASS" if r_ours >= 300_000 else "MISS")
        )
        print(
            f"  {lines:>12,} rows: >= 300k rows/s {ok_rate}; 59M <= 4 min "
            f"{'PASS' if 59e6 / r_ours <= 240 else 'MISS'}; RSS <= 1 GiB "
            f"{'PASS' if ours['maxrss'] <= GiB else 'MISS'}"
        )
    if len(results) > 1:
        rss = [r[2]["maxrss"] for r in results]
        print(
            f"  RSS ratio largest/smallest input: {rss[-1] / rss[0]:.2f} "
            f"(rows ratio {results[-1][1] / results[0][1]:.0f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
