"""Generate a download database at full scale (52M images) directly in SQL, in the state
a long download leaves it: the shape of sqlite-at-scale.md section 2.6 (73.5% success,
20% pending, 5% failed_permanent, 1.5% failed_transient of which a quarter spent).

    python bench/bigdb.py --images 52000000 --db /var/tmp/big.db

Rows are as wide as real ones (url, key, path, sha256), gbifIDs hold 1-2 images
(52M images over 32M gbifIDs), hosts are 2,000 with a skewed share. The indexes,
gbif_ids and counters are built with the product's own schema code, so the
database is what init_download_db.py plus a download would leave.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from download_db import states  # noqa: E402
from download_db.db import connection, meta, schema, tallies  # noqa: E402

HOSTS = 2000
CHUNK = 1_000_000
NOW = 1_790_000_000.0  # a fixed "now" keeps runs comparable

# One row per image_id i. gbif_id = i*8/13 gives 32M gbifIDs for 52M images
# (consecutive i share a gbifID), image_no counts within the gbifID. r picks the
# status; host is skewed (host = (i*i) mod HOSTS is lumpy enough).
_INSERT = f"""
WITH RECURSIVE s(i) AS (SELECT :lo UNION ALL SELECT i + 1 FROM s WHERE i < :hi),
v AS (SELECT i, (i * 8) / 13 AS g, (i * 7919) % 1000 AS r, ((i * i) % {HOSTS}) + 1 AS h FROM s)
INSERT INTO images(image_id, gbif_id, image_no, status, attempts, next_attempt_at, host_id,
                   attribution_id, http_status, error_type, file_size, width, height,
                   last_attempt_at, file_path, sha256, image_key, urls, error_detail,
                   fetched_url)
SELECT i, g, i - ((g * 13 + 7) / 8),
       CASE WHEN r < 735 THEN 'success' WHEN r < 935 THEN 'pending'
            WHEN r < 985 THEN 'failed_permanent' ELSE 'failed_transient' END,
       CASE WHEN r BETWEEN 735 AND 934 THEN 0 WHEN r >= 985 THEN r % 4 + 1 ELSE 1 END,
       CASE WHEN r >= 985 AND r % 4 = 3 THEN {states.EXHAUSTED}
            WHEN r >= 985 THEN {NOW} + 3600 ELSE 0 END,
       h, h,
       CASE WHEN r < 735 THEN 200 WHEN r < 935 THEN NULL WHEN r < 985 THEN 404 ELSE 503 END,
       CASE WHEN r < 735 THEN NULL WHEN r < 935 THEN NULL
            WHEN r < 985 THEN (CASE r % 3 WHEN 0 THEN 'http_404' WHEN 1 THEN
                 'invalid_content_type' ELSE 'not_an_image' END)
            ELSE (CASE r % 2 WHEN 0 THEN 'server_error' ELSE 'timeout' END) END,
       CASE WHEN r < 735 THEN 150000 + r * 97 END,
       CASE WHEN r < 735 THEN 1024 END, CASE WHEN r < 735 THEN 768 END,
       CASE WHEN r < 735 OR r >= 935 THEN {NOW} - (i % 259200) END,
       CASE WHEN r < 735 THEN printf('%03d/%03d/%d-%02d.jpg', g % 1000, (g / 1000) % 1000, g,
                                      i - ((g * 13 + 7) / 8)) END,
       CASE WHEN r < 735 THEN printf('%064x', i) END,
       printf('host%d.example.org/media/specimens/%d/full/%d', h, g, i),
       printf('https://host%d.example.org/media/specimens/%d/full/%d.jpg'
              || char(10) || 'http://host%d.example.org/thumb/%d.jpg', h, g, i, h, i),
       CASE WHEN r >= 935 AND r % 3 = 1
            THEN '[text/html] The requested specimen image is not available' END,
       CASE WHEN r < 735 THEN printf('https://host%d.example.org/media/specimens/%d/full/%d.jpg',
                                     h, g, i) END
  FROM v
"""


def build(db: Path, images: int) -> None:
    t0 = time.monotonic()
    conn = connection.connect(db, bulk=True)
    schema.create_schema(conn)
    with connection.transaction(conn):
        conn.executemany("INSERT INTO hosts(host_id, host) VALUES (?, ?)",
                         [(h, f"host{h}.example.org") for h in range(1, HOSTS + 1)])
        conn.executemany(
            "INSERT INTO attributions(attribution_id, license, rights_holder, creator, "
            "publisher) VALUES (?, 'CC-BY 4.0', ?, ?, ?)",
            [(h, f"Herbarium {h}", f"Collector {h}", f"Publisher {h % 50}" if h % 3 else None)
             for h in range(1, HOSTS + 1)])
    for lo in range(1, images + 1, CHUNK):
        hi = min(lo + CHUNK - 1, images)
        with connection.transaction(conn):
            conn.execute(_INSERT, {"lo": lo, "hi": hi})
        rate = hi / (time.monotonic() - t0)
        print(f"  rows {hi:>12,}  {rate:,.0f} rows/s", flush=True)
    print(f"  insert {time.monotonic() - t0:.0f}s; building indexes", flush=True)
    for ddl in schema.POST_LOAD_INDEXES:
        conn.execute(ddl)
    with connection.transaction(conn):
        conn.execute("INSERT INTO gbif_ids(gbif_id, n_images) "
                     "SELECT gbif_id, count(*) FROM images GROUP BY gbif_id")
        t1 = time.monotonic()
        tallies.install_tallies(conn, fresh_load=False)
        print(f"  counters by one scan (the v2 migration of a built DB): "
              f"{time.monotonic() - t1:.0f}s", flush=True)
        conn.execute("UPDATE hosts SET n_images = (SELECT coalesce(sum(n), 0) FROM image_tally t "
                     "WHERE t.host_id = hosts.host_id)")
        meta.set_meta(conn, "ingest_phase", "done")
        meta.set_meta(conn, "build_complete", "1")
    connection.use_wal(conn)
    conn.execute("PRAGMA optimize")
    conn.close()
    print(f"  built {images:,} images in {time.monotonic() - t0:.0f}s "
          f"({db.stat().st_size / 1e9:.1f} GB)", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=52_000_000)
    ap.add_argument("--db", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.db.exists():
        sys.exit(f"{a.db} exists; remove it first")
    build(a.db, a.images)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
