"""Ingest: stream multimedia.txt into images / gbif_ids / hosts, in bounded memory, resumably."""

from __future__ import annotations

import json
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TextIO

import numpy as np

from ..db import hosts
from ..db.connection import transaction
from ..db.meta import get_meta, set_meta
from ..db.runs import heartbeat
from ..db.schema import INDEX_CLAIMED, INDEX_GBIF_IMAGE, INDEX_TODO
from ..db.sqlite import sqlite3
from ..db.tallies import install_tallies
from ..errors import DatabaseError
from ..progress import RunContext, say
from ..web import keys
from . import url_groups
from .group import Grouped, group_chunk
from .reader import CHUNK_BYTES, Chunk, ParsedChunk, Source, parse_chunk

PHASE_LOADING = "loading"
PHASE_INDEXING = "indexing"
PHASE_DONE = "done"

_INSERT_IMAGE = ("INSERT INTO images(gbif_id, image_no, host_id, attribution_id, image_key, urls) "
                 "VALUES (?, ?, ?, ?, ?, ?)")
_MAX_SAMPLES = 3


@dataclass
class IngestStats:
    """What the ingest saw. Every input line is ingested (rows_ok) or skipped."""

    lines: int = 0
    rows_ok: int = 0
    images: int = 0
    split_gbif_ids: int = 0
    skips: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return sum(self.skips.values())

    def add(self, parsed: ParsedChunk, g: Grouped) -> None:
        self.lines += parsed.lines
        self.rows_ok += g.rows_ok
        self.images += g.images.num_rows
        for src in (parsed, g):
            for k, v in src.skips.items():
                self.skips[k] = self.skips.get(k, 0) + v
            for k, lst in src.samples.items():
                mine = self.samples.setdefault(k, [])
                mine.extend(lst[: _MAX_SAMPLES - len(mine)])

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> IngestStats:
        return cls(**json.loads(text)) if text else cls()


def source_fingerprint(source: Source) -> dict:
    st = source.path.stat()
    return {"path": str(source.path.resolve()), "size": st.st_size, "mtime": int(st.st_mtime)}


def ingest(conn: sqlite3.Connection, source: Source, *, run_id: int,
           chunk_bytes: int = CHUNK_BYTES, workers: int = 2,
           ctx: RunContext | None = None) -> IngestStats:
    """Load (or continue loading) ``source`` into an open database, then index it."""
    ctx = ctx or RunContext()
    phase = get_meta(conn, "ingest_phase")
    fp = source_fingerprint(source)
    if phase is None:
        with transaction(conn):
            set_meta(conn, "ingest_source", json.dumps(fp, sort_keys=True))
            # identifies this build: image_ids mean nothing across builds
            set_meta(conn, "build_id", uuid.uuid4().hex)
            set_meta(conn, "ingest_phase", PHASE_LOADING)
            set_meta(conn, "ingest_offset", str(source.header.data_offset))
            set_meta(conn, "ingest_stats", IngestStats().to_json())
        phase = PHASE_LOADING
    else:
        recorded = json.loads(get_meta(conn, "ingest_source") or "{}")
        if recorded != fp:
            raise DatabaseError(
                f"this database holds an unfinished ingest of {recorded.get('path')} "
                f"(size {recorded.get('size')}), not {fp['path']} (size {fp['size']}); "
                "rerun with that file, or use --reset to start over")
        if phase == PHASE_DONE:
            # Loaded and indexed, but killed before the build was marked complete (during
            # the legacy import or finalize that follow, or just before): nothing to redo.
            return IngestStats.from_json(get_meta(conn, "ingest_stats"))
        offset = int(get_meta(conn, "ingest_offset") or 0)
        ctx.say(f"ingest: resuming {source.path} at byte {offset:,}")
    stats = IngestStats.from_json(get_meta(conn, "ingest_stats"))
    # the URL hashes of every row, spilled as the load goes: only a load that ran
    # from its start in this process saw every row (a resumed one reads them back)
    spill = url_groups.Spill(conn) if phase == PHASE_LOADING and \
        int(get_meta(conn, "ingest_offset") or 0) == source.header.data_offset else None
    try:
        if phase == PHASE_LOADING:
            _load(conn, source, stats, run_id=run_id, chunk_bytes=chunk_bytes,
                  workers=workers, ctx=ctx, spill=spill)
            with transaction(conn):
                set_meta(conn, "ingest_phase", PHASE_INDEXING)
        _post_load(conn, stats, ctx, spill)
    finally:
        if spill is not None:
            spill.close()
    return stats


def _transformed(source: Source, start: int, chunk_bytes: int,
                 workers: int) -> Iterator[tuple[Chunk, ParsedChunk, Grouped, np.ndarray]]:
    """Parsed and grouped chunks in input order, with the hashes of the images' first
    URLs; parsing runs on worker threads (pyarrow releases the GIL) while the caller
    inserts the previous chunk."""
    header = source.header

    def work(chunk: Chunk) -> tuple[Chunk, ParsedChunk, Grouped, np.ndarray]:
        parsed = parse_chunk(chunk.data, header)
        g = group_chunk(parsed.table)
        return chunk, parsed, g, url_groups.url_hashes(url_groups.first_urls(
            g.images.column("urls")))

    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") as pool:
        try:
            for chunk in source.chunks(start, chunk_bytes):
                pending.append(pool.submit(work, chunk))
                # Bounded read-ahead keeps memory flat whatever the input size.
                while len(pending) > workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def _load(conn: sqlite3.Connection, source: Source, stats: IngestStats, *, run_id: int,
          chunk_bytes: int, workers: int, ctx: RunContext,
          spill: url_groups.Spill | None) -> None:
    start = int(get_meta(conn, "ingest_offset") or source.header.data_offset)
    host_ids = hosts.ids_by_name(conn)
    next_host = max(host_ids.values(), default=0) + 1
    progress = ctx.progress("ingest", source.total_bytes, start_bytes=start, item="rows")
    try:
        for chunk, parsed, g, url_hashes in _transformed(source, start, chunk_bytes, workers):
            new_hosts = []
            for h in g.hosts:
                if h not in host_ids:
                    host_ids[h] = next_host
                    new_hosts.append((next_host, h))
                    next_host += 1
            local = np.array([host_ids[h] for h in g.hosts], dtype=np.int64)
            host_local = g.images.column("host_local").to_numpy()
            per_host = np.bincount(host_local, minlength=len(g.hosts)) if len(host_local) else []
            t = g.images
            rows = zip(t.column("gbif_id").to_pylist(), t.column("image_no").to_pylist(),
                       local[host_local].tolist(), t.column("attribution_id").to_pylist(),
                       t.column("image_key").to_pylist(), t.column("urls").to_pylist(),
                       strict=True)
            stats.add(parsed, g)
            with transaction(conn):
                hosts.add(conn, new_hosts)
                conn.executemany("INSERT OR IGNORE INTO attributions(attribution_id, license, "
                                 "rights_holder, creator, publisher) VALUES (?, ?, ?, ?, ?)",
                                 g.attributions)
                # rowids are appended: max + 1, max + 2, ... in input order
                first = conn.execute("SELECT coalesce(max(image_id), 0) + 1 FROM images"
                                     ).fetchone()[0]
                conn.executemany(_INSERT_IMAGE, rows)
                hosts.count_images(conn, [(int(c), int(local[j]))
                                          for j, c in enumerate(per_host) if c])
                set_meta(conn, "ingest_offset", str(chunk.end))
                set_meta(conn, "ingest_stats", stats.to_json())
                heartbeat(conn, run_id)
            if spill is not None:
                spill.add(np.arange(first, first + t.num_rows, dtype=np.int64), url_hashes)
            progress.update(chunk.end, parsed.lines)
            ctx.check_stop()
    finally:
        progress.close()


def _post_load(conn: sqlite3.Connection, stats: IngestStats, ctx: RunContext,
               spill: url_groups.Spill | None) -> None:
    out = ctx.out
    say("ingest: building indexes", out)
    try:
        conn.execute(INDEX_GBIF_IMAGE)
    except sqlite3.IntegrityError:
        # Some gbifID's rows were not contiguous in the file: merge them now.
        _merge_split_gbif_ids(conn, stats, out)
        conn.execute(INDEX_GBIF_IMAGE)
        if spill is not None:  # merged rows may have another first URL now: read them back
            spill.close()
            spill = None
    conn.execute(INDEX_TODO)
    conn.execute(INDEX_CLAIMED)
    say("ingest: finding URLs several images share", out)
    groups, grouped = url_groups.compute(conn, ctx, spill)
    say(f"ingest: {groups:,} URLs shared by {grouped:,} images (each fetched once)", out)
    say("ingest: counting images per gbifID", out)
    with transaction(conn):
        conn.execute("DELETE FROM gbif_ids")
        conn.execute("INSERT INTO gbif_ids(gbif_id, n_images) "
                     "SELECT gbif_id, count(*) FROM images GROUP BY gbif_id")
        install_tallies(conn, fresh_load=True)
        set_meta(conn, "ingest_stats", stats.to_json())
        set_meta(conn, "ingest_phase", PHASE_DONE)


def _merge_split_gbif_ids(conn: sqlite3.Connection, stats: IngestStats,
                          out: TextIO | None) -> None:
    """Give each gbifID whose rows appeared in several places one dense set of
    images: same key -> one image (candidates re-ranked), image_no renumbered in
    first-appearance order. Idempotent: fixed IDs have a single image_no 0."""
    conn.execute("CREATE INDEX IF NOT EXISTS images_gbif_tmp ON images(gbif_id, image_no)")
    split = [r[0] for r in conn.execute(
        "SELECT gbif_id FROM images WHERE image_no = 0 GROUP BY gbif_id HAVING count(*) > 1")]
    say(f"ingest: merging {len(split):,} gbifIDs whose rows were not contiguous", out)
    for i in range(0, len(split), 1000):
        with transaction(conn):
            for gid in split[i:i + 1000]:
                stats.images -= _merge_one(conn, gid)
            stats.split_gbif_ids += len(split[i:i + 1000])
            set_meta(conn, "ingest_stats", stats.to_json())
    conn.execute("DROP INDEX IF EXISTS images_gbif_tmp")


def _merge_one(conn: sqlite3.Connection, gid: int) -> int:
    rows = conn.execute("SELECT image_id, image_key, urls, attribution_id FROM images "
                        "WHERE gbif_id = ? ORDER BY image_id", (gid,)).fetchall()
    by_key: dict[str, list] = {}
    order: list[str] = []
    for image_id, key, urls, attr in rows:
        if key not in by_key:
            by_key[key] = [image_id, [], attr, []]
            order.append(key)
        entry = by_key[key]
        entry[3].append(image_id)
        for u in urls.split("\n"):
            entry[1].append((u, attr))
    removed = 0
    for image_no, key in enumerate(order):
        image_id, cands, attr, ids = by_key[key]
        good: list[keys.Candidate] = []
        attr_of: dict[str, int | None] = {}  # a URL's attribution where it first appears
        for u, a in cands:
            c = keys.parse_identifier(u)
            if isinstance(c, keys.Candidate):
                good.append(c)
                attr_of.setdefault(c.url, a)
        ranked = keys.rank_candidates(good)
        urls_out = [c.url for c in ranked]
        best_attr = attr_of[ranked[0].url] if ranked else attr
        conn.execute("UPDATE images SET image_no = ?, urls = ?, attribution_id = ? "
                     "WHERE image_id = ?", (image_no, "\n".join(urls_out), best_attr, image_id))
        dups = [x for x in ids if x != image_id]
        if dups:
            hosts.uncount_images(conn, dups)
            conn.executemany("DELETE FROM images WHERE image_id = ?", [(x,) for x in dups])
            removed += len(dups)
    return removed
