"""URL groups: rows whose first candidate URL other rows share get url_group, in bounded memory."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..db import url_groups
from ..db.connection import transaction
from ..db.sqlite import sqlite3
from ..progress import RunContext

CHUNK = 200_000  # rows read, hashed and spilled at a time
BUCKET_BITS = 6  # 64 spill files by the hash's top bits: ~1/64 of the rows in memory at once
_REC = np.dtype([("h", "<u8"), ("id", "<i8")])
_LOOKUP = 20_000  # candidate ids per query for their URLs
_PREFIX = ".url_groups-"  # the spill directory: <db file name> + this + random


def url_hashes(urls: np.ndarray) -> np.ndarray:
    """64-bit hashes of URL strings (vectorised; equal strings, equal hashes). Two
    different URLs may collide: groups_of() compares the strings themselves."""
    return pd.util.hash_array(urls, categorize=False)


def groups_of(rows: Iterable[tuple[int, str]]) -> list[tuple[int, int]]:
    """(url_group, image_id) for every row whose URL another row has too: the
    group is the smallest image_id with that URL (pure)."""
    by_url: dict[str, list[int]] = {}
    for image_id, url in rows:
        by_url.setdefault(url, []).append(image_id)
    return sorted((min(ids), i) for ids in by_url.values() if len(ids) > 1 for i in ids)


def _duplicated(rec: np.ndarray) -> np.ndarray:
    """The ids of records whose hash another record has too."""
    if len(rec) < 2:
        return np.empty(0, np.int64)
    rec = rec[np.argsort(rec["h"], kind="stable")]
    h = rec["h"]
    same = h[1:] == h[:-1]
    dup = np.zeros(len(rec), bool)
    dup[1:] |= same
    dup[:-1] |= same
    return rec["id"][dup]


def first_urls(urls: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The first of each row's newline-joined candidate URLs (db/url_groups.PRIMARY_URL
    in Arrow), as an object array for url_hashes()."""
    return pc.list_element(pc.split_pattern(urls, "\n", max_splits=1), 0).to_numpy(
        zero_copy_only=False)


class Spill:
    """(hash, image_id) records in 64 files by the hash's top bits, in a temporary
    directory beside the database (its disk has room for 16 bytes per image). What a
    killed pass left there is removed by the next one: only exclusive stages spill."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        where, prefix = None, _PREFIX
        for _seq, name, file in conn.execute("PRAGMA database_list"):
            if name == "main" and file:  # else an in-memory database: the system's
                where, prefix = str(Path(file).parent), f".{Path(file).name}{_PREFIX}"
        for old in Path(where or tempfile.gettempdir()).glob(prefix + "*"):
            shutil.rmtree(old, ignore_errors=True)
        self._tmp = tempfile.TemporaryDirectory(prefix=prefix, dir=where)
        self.paths = [Path(self._tmp.name) / f"{k:02d}" for k in range(1 << BUCKET_BITS)]
        self._files = [open(p, "wb") for p in self.paths]  # noqa: SIM115 - closed in close()

    def add(self, ids: np.ndarray, hashes: np.ndarray) -> None:
        rec = np.empty(len(ids), _REC)
        rec["id"], rec["h"] = ids, hashes
        bucket = (rec["h"] >> np.uint64(64 - BUCKET_BITS)).astype(np.intp)
        order = np.argsort(bucket, kind="stable")
        rec, bucket = rec[order], bucket[order]
        bounds = np.searchsorted(bucket, np.arange(len(self.paths) + 1))
        for k, f in enumerate(self._files):
            if bounds[k] < bounds[k + 1]:
                f.write(rec[bounds[k]:bounds[k + 1]].tobytes())

    def buckets(self) -> Iterator[np.ndarray]:
        """Each file's records, one file in memory at a time."""
        for f in self._files:
            f.close()
        for path in self.paths:
            yield np.fromfile(path, dtype=_REC)
            path.unlink()

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._tmp.cleanup()


def compute(conn: sqlite3.Connection, ctx: RunContext | None = None,
            spill: Spill | None = None) -> tuple[int, int]:
    """Give every row whose first candidate URL other rows share its url_group, once
    per database (meta url_groups = done; a database built before this gets it at its
    next ingest, merge or finalize stage). ``spill`` holds the (hash, image_id) of
    every row already (an uninterrupted ingest fills it as it loads); else one pass
    reads (image_id, URL) in chunks and fills it. Then per file: equal hashes, confirmed
    on the URLs themselves. Memory is a chunk or a file, ~16 bytes per row / 64. A kill
    loses nothing: the writes are idempotent and a re-run starts over. Returns
    (groups, images in them)."""
    if url_groups.done(conn):
        if spill is not None:
            spill.close()
        return url_groups.count(conn)
    ctx = ctx or RunContext(every=0.0)
    try:
        if spill is None:
            spill = Spill(conn)
            _spill_from_db(conn, spill, ctx)
        for rec in spill.buckets():
            ids = _duplicated(rec).tolist()
            del rec
            rows: list[tuple[int, str]] = []
            for lo in range(0, len(ids), _LOOKUP):
                rows += url_groups.primary_urls_of(conn, ids[lo:lo + _LOOKUP])
            found = groups_of(rows)
            if found:
                with transaction(conn):
                    url_groups.save(conn, found)
            ctx.check_stop()
    finally:
        if spill is not None:
            spill.close()
    with transaction(conn):
        url_groups.mark_done(conn)
    return url_groups.count(conn)


def _spill_from_db(conn: sqlite3.Connection, spill: Spill, ctx: RunContext) -> None:
    total = conn.execute("SELECT count(*) FROM images").fetchone()[0]
    progress = ctx.progress("url groups", total, item="rows", counting=True)
    try:
        after, seen = 0, 0
        while rows := url_groups.primary_urls(conn, after, CHUNK):
            spill.add(np.fromiter((r[0] for r in rows), np.int64, len(rows)),
                      url_hashes(np.array([r[1] for r in rows], dtype=object)))
            after = rows[-1][0]
            seen += len(rows)
            progress.update(seen, len(rows))
            ctx.check_stop()
    finally:
        progress.close()
