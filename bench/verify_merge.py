"""Applying a verify array's verdicts (merge): verdicts/s against one UPDATE per verdict.

    python bench/verify_merge.py --records 200000

Builds a database from generated input (tests/helpers.generate), marks every image
saved, writes one verify task's verdicts database (1% of the files unsound), and times
arrays/verdicts.merge_verdicts. The baseline, in the same run on a fresh copy, is
the cheapest per-verdict form: one prepared UPDATE of last_checked per image by rowid
(executemany), in the same 10,000-verdict transactions.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from download_db.arrays.verdicts import CHUNK, merge_verdicts  # noqa: E402
from download_db.cli.main import init_main  # noqa: E402
from download_db.db import verdicts  # noqa: E402
from download_db.db.connection import connect, transaction  # noqa: E402
from download_db.db.meta import get_meta  # noqa: E402
from tests.helpers import generate  # noqa: E402


def _build(d: Path, records: int) -> tuple[Path, list[tuple]]:
    db = d / "d.db"
    assert init_main(["--db", str(db), "--multimedia", str(generate(d / "m.txt", records)),
                      "--no-bar"]) == 0
    c = connect(db)
    with transaction(c):
        c.execute("UPDATE images SET status = 'success', file_path = 'x/' || image_id, "
                  "file_size = 100, sha256 = lower(hex(randomblob(32)))")
    rows = c.execute("SELECT image_id, file_path, file_size, sha256 FROM images").fetchall()
    build = get_meta(c, "build_id") or ""
    c.close()
    tasks = Path(f"{db}.tasks")
    tasks.mkdir()
    v = connect(tasks / "verify-0001-of-0001.db", wal=False)
    now = time.time()
    with transaction(v):
        verdicts.create(v, {"verdicts_id": "bench", "task_shard": "1/1", "build_id": build,
                            "install_path": str(d / "nowhere")})
        verdicts.record(v, [verdicts.Verdict(i, now, p, s, h,
                                             "file_missing" if i % 100 == 0 else None,
                                             "gone" if i % 100 == 0 else None)
                            for i, p, s, h in rows], (None, rows[-1][0]))
    v.close()
    return db, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "a"
        d.mkdir()
        db, rows = _build(d, a.records)
        shutil.copytree(d, Path(tmp) / "b")
        c = connect(db)
        t0 = time.perf_counter()
        st = merge_verdicts(c, db, out=io.StringIO())
        merge_s = time.perf_counter() - t0
        c.close()
        base = connect(Path(tmp) / "b" / "d.db")
        now = time.time()
        t0 = time.perf_counter()
        for i in range(0, len(rows), CHUNK):
            with transaction(base):
                base.executemany("UPDATE images SET last_checked = ? WHERE image_id = ?",
                                 [(now, r[0]) for r in rows[i:i + CHUNK]])
        base_s = time.perf_counter() - t0
        base.close()
    n = len(rows)
    print("| verdicts | requeued | merge | verdicts/s | one UPDATE per verdict | ratio |")
    print("|---|---|---|---|---|---|")
    print(f"| {n:,} | {sum(st.requeued.values()):,} | {merge_s:.1f} s | {n / merge_s:,.0f} | "
          f"{n / base_s:,.0f}/s | {base_s / merge_s:.2f}x |")


if __name__ == "__main__":
    main()
