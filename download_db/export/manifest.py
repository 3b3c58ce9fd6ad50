"""The manifest of saved images: one query streamed in bounded Arrow batches, with the filters."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..db import occurrences, upkeep
from ..db.sqlite import sqlite3
from ..errors import DatabaseError, StorageError, UsageError
from ..states import PLACEHOLDER, SUCCESS
from . import FORMATS, licences, pages

# Names and types are a contract (docs/export.md): scripts rely on them.
SCHEMA = pa.schema([
    ("gbif_id", pa.int64()),
    ("image_no", pa.int32()),
    ("path", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("bytes", pa.int64()),
    ("sha256", pa.string()),
    ("phash", pa.int64()),  # imagehash bits as signed 64-bit (the database's form)
    ("dhash", pa.int64()),
    ("dup_group", pa.int64()),
    ("near_group", pa.int64()),
    ("placeholder", pa.bool_()),
    ("url", pa.string()),
    ("license", pa.string()),
    ("license_short", pa.string()),
    ("rights_holder", pa.string()),
    ("creator", pa.string()),
    ("publisher", pa.string()),
    ("dataset_key", pa.string()),
    ("occurrence_id", pa.string()),
    ("downloaded_at", pa.timestamp("ms", tz="UTC")),
])

BATCH_ROWS = 65536  # rows per query and per Arrow batch: memory stays flat at any size

# Columns the identity stage and the fetched-URL record add to images when they
# exist; until then the manifest carries them as typed nulls.
_OPTIONAL = ("phash", "dhash", "dup_group", "near_group", "placeholder", "fetched_url")
# Rows saved before the fetched URL was recorded (and adopted files): the first
# candidate, the one the downloader tries first (an IIIF manifest: its URL).
_FIRST_URL = "substr(i.urls, 1, instr(i.urls || char(10), char(10)) - 1)"
# Selected values that are not manifest columns as such.
_HELPER_TYPES = {"attribution_id": pa.int64(), "downloaded_at": pa.float64(),
                 "placeholder": pa.int64(), "image_id": pa.int64(),
                 "institution_code": pa.string()}


@dataclass(frozen=True)
class Filters:
    """What to export. Empty lists mean no restriction."""

    licenses: Sequence[str] = ()  # short forms (licences.SHORT_FORMS)
    hosts: Sequence[str] = ()
    since: float | None = None  # epoch seconds: downloaded at or after
    exclude_duplicates: bool = False
    exclude_placeholders: bool = False


@dataclass
class Source:
    """What the query needs to know about one database, read once up front."""

    columns: set[str]
    has_occurrences: bool
    host_ids: list[int] = field(default_factory=list)
    attr_ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    attr: dict[str, pa.Array] = field(default_factory=dict)
    duplicates: pa.Array | None = None
    # dedupe has run: placeholders are flagged 'placeholder' failures, so a saved
    # image is known not to be one (false, not null)
    placeholders_checked: bool = False


def parse_since(text: str) -> float:
    """``--since``: a date or an ISO date-time (UTC unless it says otherwise)."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--since {text!r}: not a date (use YYYY-MM-DD or an ISO date-time)"
                         ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def make_filters(*, license: str | Sequence[str] | None = None,
                 host: str | Sequence[str] | None = None,
                 since: str | dt.date | float | None = None, exclude_duplicates: bool = False,
                 exclude_placeholders: bool = False) -> Filters:
    """Filters from user-level values (the CLI's flags, read_manifest's keywords)."""
    names = [license] if isinstance(license, str) else list(license or [])
    try:
        shorts = [s for n in names for s in licences.parse_filter(n)]
    except ValueError as e:
        raise UsageError(f"--license: {e}") from None
    hosts = [host] if isinstance(host, str) else list(host or [])
    if isinstance(since, dt.datetime):
        since_s: float | None = (since if since.tzinfo else
                                 since.replace(tzinfo=dt.timezone.utc)).timestamp()
    elif isinstance(since, dt.date):
        since_s = parse_since(since.isoformat())
    elif isinstance(since, str):
        since_s = parse_since(since)
    else:
        since_s = float(since) if since is not None else None
    return Filters(licenses=shorts, hosts=[h.strip().lower() for h in hosts if h.strip()],
                   since=since_s, exclude_duplicates=exclude_duplicates,
                   exclude_placeholders=exclude_placeholders)


def prepare(conn: sqlite3.Connection, f: Filters) -> Source:
    """Check the database can be exported and read the small lookup tables."""
    phase = conn.execute("SELECT value FROM meta WHERE key = 'ingest_phase'").fetchone()
    if not phase or phase[0] != "done":
        raise DatabaseError("the database is still being built (ingest not finished): run the "
                            "ingest to the end before exporting")
    src = Source(columns={r[1] for r in conn.execute("PRAGMA table_info(images)")},
                 has_occurrences=occurrences.present(conn))
    src.placeholders_checked = conn.execute(
        "SELECT 1 FROM meta WHERE key = 'dedupe_stats'").fetchone() is not None
    for host in f.hosts:
        row = conn.execute("SELECT host_id FROM hosts WHERE host = ?", (host,)).fetchone()
        if row is None:
            raise UsageError(f"--host {host}: no images from that host in this database")
        src.host_ids.append(int(row[0]))
    # publisher: the multimedia row's (schema v14); an older database has none
    names = ["license", "rights_holder", "creator"]
    if "publisher" in {r[1] for r in conn.execute("PRAGMA table_info(attributions)")}:
        names.append("publisher")
    rows = conn.execute(f"SELECT attribution_id, {', '.join(names)} "
                        "FROM attributions ORDER BY attribution_id").fetchall()
    src.attr_ids = np.array([r[0] for r in rows], dtype=np.int64)
    for k, name in enumerate(names, start=1):
        src.attr[name] = pa.array([r[k] or None for r in rows], pa.string())
    src.attr["license_short"] = pa.array([licences.normalise(r[1]) for r in rows], pa.string())
    if f.exclude_duplicates:
        src.duplicates = _duplicates(conn, f, src)
    return src


def _where(f: Filters, src: Source) -> str:
    parts = [f"i.status = '{SUCCESS}'", "i.file_path IS NOT NULL"]
    if src.host_ids:
        parts.append(f"i.host_id IN ({', '.join(str(h) for h in src.host_ids)})")
    if f.since is not None:
        parts.append(f"i.last_attempt_at >= {float(f.since)!r}")
    if f.exclude_placeholders and "placeholder" in src.columns:
        parts.append("coalesce(i.placeholder, 0) = 0")
    return " AND ".join(parts)


def _duplicates(conn: sqlite3.Connection, f: Filters, src: Source) -> pa.Array:
    """image_ids that repeat an earlier exported image: the same bytes (sha256) or,
    once dedupe has grouped them, the same near group (pHash within its distance).

    One sort of the selected rows per criterion (SQLite spills it to temp files);
    memory holds only the duplicates, not every row.
    """
    near = ("CASE WHEN i.near_group IS NULL THEN 1 ELSE row_number() OVER "
            "(PARTITION BY i.near_group ORDER BY i.image_id) END"
            if "near_group" in src.columns else "1")
    sql = (f"SELECT image_id FROM (SELECT i.image_id, CASE WHEN i.sha256 IS NULL THEN 1 ELSE "
           f"row_number() OVER (PARTITION BY i.sha256 ORDER BY i.image_id) END AS exact, "
           f"{near} AS near FROM images i WHERE {_where(f, src)}) WHERE exact > 1 OR near > 1")
    return pa.array(np.fromiter((r[0] for r in conn.execute(sql)), dtype=np.int64), pa.int64())


def query(f: Filters, src: Source, ranged: bool = False) -> str:
    """One page of the manifest, in (gbif_id, image_no) order from after :g/:n
    (``ranged``: and gbifIDs below :end).

    Keyset pages on the unique (gbif_id, image_no) index: each page is its own
    short read, and a gbifID's images are adjacent, so records are counted
    without remembering gbifIDs.
    """
    sel = _selected(f, src)
    exprs = ", ".join(sel.values())
    join = "LEFT JOIN occurrences o ON o.gbif_id = i.gbif_id" if src.has_occurrences else ""
    return (f"SELECT {exprs} FROM images i INDEXED BY images_gbif_image {join} "
            f"WHERE (i.gbif_id, i.image_no) > (:g, :n) "
            f"{'AND i.gbif_id < :end ' if ranged else ''}AND {_where(f, src)} "
            f"ORDER BY i.gbif_id, i.image_no LIMIT {BATCH_ROWS}")


def _selected(f: Filters, src: Source) -> dict[str, str]:
    """Manifest column (or helper) -> its SQL; a column this database does not hold
    is not selected (fetching a None per row costs as much as a value)."""
    sel = {"gbif_id": "i.gbif_id", "image_no": "i.image_no", "path": "i.file_path",
           "width": "i.width", "height": "i.height", "bytes": "i.file_size",
           "sha256": "i.sha256"}
    sel.update({c: f"i.{c}" for c in _OPTIONAL[:-1] if c in src.columns})
    if "placeholder" not in src.columns and src.placeholders_checked:
        sel["placeholder"] = f"i.error_type IS '{PLACEHOLDER}'"
    sel["url"] = (f"coalesce(i.fetched_url, {_FIRST_URL})" if "fetched_url" in src.columns
                  else _FIRST_URL)
    sel["attribution_id"] = "i.attribution_id"
    if src.has_occurrences:
        sel.update(institution_code="o.institution_code", dataset_key="o.dataset_key",
                   occurrence_id="o.occurrence_id")
    sel["downloaded_at"] = "i.last_attempt_at"
    if src.duplicates is not None:
        sel["image_id"] = "i.image_id"
    return sel


def batches(conn: sqlite3.Connection, f: Filters, src: Source) -> Iterator[pa.RecordBatch]:
    """The manifest as RecordBatches of SCHEMA, at most BATCH_ROWS rows each.

    The pages are read through ADBC (export/pages.py) from the file behind ``conn``, no
    Python object per row, by several readers on consecutive gbifID ranges; the batches
    come out in (gbif_id, image_no) order all the same.
    """
    types = {c: _HELPER_TYPES.get(c) or SCHEMA.field(c).type for c in _selected(f, src)}
    sql, path = query(f, src, ranged=True), pages.database_path(conn)
    lo, hi = conn.execute("SELECT min(gbif_id), max(gbif_id) FROM gbif_ids").fetchone()
    try:
        saved = upkeep.count_saved(conn)
    except sqlite3.OperationalError:  # a database from before the counters (v1), unmigrated
        saved = 0  # one range: read as before
    ranges = pages.key_ranges(lo, hi, saved, BATCH_ROWS)

    def read(start: int, end: int) -> Iterator[pa.RecordBatch]:
        g, n = start, -1
        with pages.PageReader(path, sql, types, BATCH_ROWS) as rd:
            while True:
                page = rd.page(g, n, end)
                if not page.num_rows:
                    return
                g, n = page.column(0)[-1].as_py(), page.column(1)[-1].as_py()
                cols = {c: page.column(c).combine_chunks() for c in types}
                batch = _to_batch(cols, page.num_rows, f, src)
                if batch.num_rows:
                    yield batch
                if page.num_rows < BATCH_ROWS:
                    return

    return pages.in_order(ranges, read)


def _take(values: pa.Array, idx: np.ndarray, found: np.ndarray) -> pa.Array:
    return values.take(pa.array(idx, pa.int64(), mask=~found))


def _to_batch(cols: dict[str, pa.Array], n: int, f: Filters, src: Source) -> pa.RecordBatch:
    arrays: dict[str, pa.Array] = {}
    if len(src.attr_ids):
        attr = cols["attribution_id"].fill_null(-1).to_numpy()
        idx = np.searchsorted(src.attr_ids, attr).clip(0, len(src.attr_ids) - 1)
        found = src.attr_ids[idx] == attr
        for name, values in src.attr.items():
            arrays[name] = _take(values, idx, found)
    # an image without an attribution row states no licence
    arrays["license_short"] = pc.fill_null(
        arrays.get("license_short", pa.nulls(n, pa.string())), licences.UNKNOWN)
    # the multimedia row's publisher, else the occurrence's institutionCode
    if "institution_code" in cols:
        arrays["publisher"] = pc.coalesce(arrays.get("publisher", pa.nulls(n, pa.string())),
                                          cols["institution_code"])
    millis = pc.round(pc.multiply(cols["downloaded_at"], 1000.0))
    arrays["downloaded_at"] = pc.cast(millis, pa.int64()).cast(SCHEMA.field("downloaded_at").type)
    if "placeholder" in cols:
        arrays["placeholder"] = pc.cast(cols["placeholder"], pa.bool_())
    for fld in SCHEMA:
        if fld.name not in arrays:
            arrays[fld.name] = cols[fld.name] if fld.name in cols else pa.nulls(n, fld.type)
    batch = pa.RecordBatch.from_arrays([arrays[c] for c in SCHEMA.names], schema=SCHEMA)
    keep = None
    if f.licenses:
        keep = pc.is_in(arrays["license_short"], pa.array(list(f.licenses), pa.string()))
    if src.duplicates is not None and len(src.duplicates):
        fresh = pc.invert(pc.is_in(cols["image_id"], src.duplicates))
        keep = fresh if keep is None else pc.and_(keep, fresh)
    return batch if keep is None else batch.filter(keep)


# -- files -----------------------------------------------------------------------------
ROW_GROUP_ROWS = 4 * BATCH_ROWS  # ~256k rows a row group: readers can skip and parallelise
# Parquet dictionaries for the columns with few distinct values only: on unique strings
# (path, sha256, url, occurrence_id) a dictionary is built and then abandoned for every
# row group. Measured on bench/export.py's data: writing 1.4x faster, the file 23% smaller.
_DICTIONARY = ["license", "license_short", "rights_holder", "creator", "publisher",
               "dataset_key"]
# min/max statistics where a reader filters on them (numbers, times, the short licence);
# long text statistics cost time and skip nothing
_STATISTICS = [c for c in SCHEMA.names if c == "license_short" or
               not pa.types.is_string(SCHEMA.field(c).type)]


def temp_path(path: Path) -> Path:
    """Where a file is written before its rename: same folder, hidden, this process's."""
    return path.with_name(f".{path.name}.{os.getpid()}.part")


def open_temp(path: Path, flag: str = "--out") -> tuple[Path, BinaryIO]:
    """Open the temp file of ``path``; an unwritable place is one line naming the flag."""
    if path.is_dir():
        raise StorageError(f"{flag} {path}: is a directory; give a file name")
    if not path.parent.is_dir():
        raise StorageError(f"{flag} {path}: folder {path.parent} does not exist")
    tmp = temp_path(path)
    try:
        return tmp, open(tmp, "wb")  # noqa: SIM115 - closed by the caller, then renamed
    except OSError as e:
        raise StorageError(f"{flag} {path}: cannot write there ({e.strerror})") from None


def write_stream(fh: BinaryIO, fmt: str, stream: Iterable[pa.RecordBatch]) -> int:
    """Write the batches to an open file in ``fmt``; returns the rows written."""
    n = 0
    if fmt == "parquet":
        buf: list[pa.RecordBatch] = []
        held = 0
        with pq.ParquetWriter(fh, SCHEMA, compression="zstd", use_dictionary=_DICTIONARY,
                              write_statistics=_STATISTICS) as w:
            for b in stream:
                buf.append(b)
                held += b.num_rows
                if held >= ROW_GROUP_ROWS:
                    w.write_table(pa.Table.from_batches(buf, SCHEMA), row_group_size=held)
                    n, buf, held = n + held, [], 0
            if buf or not n:
                w.write_table(pa.Table.from_batches(buf, SCHEMA), row_group_size=max(held, 1))
                n += held
    elif fmt == "csv":
        with pacsv.CSVWriter(fh, SCHEMA) as w:
            for b in stream:
                w.write_batch(b)
                n += b.num_rows
    elif fmt == "jsonl":
        for b in stream:
            fh.write("".join(json.dumps(r, default=_iso, ensure_ascii=False) + "\n"
                             for r in b.to_pylist()).encode())
            n += b.num_rows
    else:
        raise UsageError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    return n


def _iso(v: object) -> str:
    if isinstance(v, dt.datetime):
        return v.isoformat().replace("+00:00", "Z")
    raise TypeError(type(v).__name__)


def publish(tmp: Path, fh: BinaryIO, path: Path) -> None:
    """Close and rename a finished temp file onto its final name."""
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()
    os.replace(tmp, path)


def discard(tmp: Path, fh: BinaryIO) -> None:
    """An export that did not finish leaves nothing behind."""
    fh.close()
    tmp.unlink(missing_ok=True)
