"""The export stage: the manifest and its citation files, each renamed into place whole."""

from __future__ import annotations

import datetime as dt
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

import pyarrow as pa

from ..arrays.merge import refuse_if_tasks_running
from ..db import occurrences, schema
from ..db.connection import open_readonly
from ..db.meta import get_meta
from ..db.sqlite import sqlite3
from ..errors import DatabaseError, Interrupted, UsageError
from ..progress import say
from ..signals import stop_on_signals
from ..stages import recorded_run
from . import citation, manifest
from .manifest import Filters


@dataclass
class ExportSummary:
    out: Path
    fmt: str
    images: int
    records: int
    datasets: int
    doi: str | None


def format_for(out: Path, fmt: str | None) -> str:
    """--format, else the file's suffix (.csv, .jsonl), else Parquet."""
    if fmt:
        if fmt not in manifest.FORMATS:
            raise UsageError(f"--format {fmt}: use one of {', '.join(manifest.FORMATS)}")
        return fmt
    suffix = out.suffix.lower().lstrip(".")
    return {"csv": "csv", "jsonl": "jsonl", "ndjson": "jsonl"}.get(suffix, "parquet")


def _open(db: Path, force: bool) -> sqlite3.Connection:
    if not db.is_file():
        raise DatabaseError(f"--db {db}: no such database")
    if not force:
        # the main database lacks an array's results until they are merged
        refuse_if_tasks_running(db, "exporting")
    conn = open_readonly(db)
    if schema.schema_version(conn) == 0:
        conn.close()
        raise DatabaseError(f"--db {db}: not a download database (no schema version)")
    return conn


def _describe(f: Filters) -> str:
    parts = []
    if f.licenses:
        parts.append(f"--license {','.join(f.licenses)}")
    parts += [f"--host {h}" for h in f.hosts]
    if f.since is not None:
        when = dt.datetime.fromtimestamp(f.since, dt.timezone.utc)
        parts.append(f"--since {when:%Y-%m-%dT%H:%M:%SZ}")
    if f.exclude_duplicates:
        parts.append("--exclude-duplicates")
    if f.exclude_placeholders:
        parts.append("--exclude-placeholders")
    return " ".join(parts)


def _ahead(batches: Iterator[pa.RecordBatch], depth: int = 2) -> Iterator[pa.RecordBatch]:
    """The batches, produced on a thread while the caller writes the previous ones.

    Encoding and compressing Parquet releases the GIL, as does SQLite's step, so
    the query and the writing overlap; ``depth`` batches at most wait in between.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for b in batches:
                while not stop.is_set():
                    try:
                        q.put(b, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - handed to the consuming thread
            q.put(e)

    t = threading.Thread(target=produce, name="export-query", daemon=True)
    t.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # let a blocked producer see the stop
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        t.join()


def _write_text(path: Path, text: str) -> None:
    tmp, fh = manifest.open_temp(path, "--out")
    try:
        fh.write(text.encode())
    except BaseException:
        manifest.discard(tmp, fh)
        raise
    manifest.publish(tmp, fh, path)


def run_export(db: Path, out: Path, *, fmt: str | None = None, filters: Filters = Filters(),
               force: bool = False, echo: TextIO | None = None) -> ExportSummary:
    """Write the manifest of ``db``'s saved images to ``out`` and the citation files beside it.

    Recorded in runs as 'export' (stages.recorded_run: the reading connection stays
    read-only). A stop signal ends it between batches, like a failure: nothing written."""
    fmt = format_for(out, fmt)
    conn = _open(db, force)
    try:
        tmp, fh = manifest.open_temp(out)  # an unusable --out is refused, not a failed run
    except BaseException:
        conn.close()
        raise
    t0 = time.monotonic()
    with stop_on_signals() as stop, \
            recorded_run(db, "export", lambda m: say(m, echo)) as counts:
        try:
            tally = _write_manifest(conn, fh, fmt, filters, stop, counts)
            doi = get_meta(conn, occurrences.META_DOI)
            _write_text(out.with_name(citation.DERIVED_NAME), citation.derived_dataset_csv(tally))
            _write_text(out.with_name(citation.CITATION_NAME),
                        citation.citation_text(tally, doi=doi, manifest_name=out.name,
                                               filters=_describe(filters)))
            manifest.publish(tmp, fh, out)
        except BaseException:
            manifest.discard(tmp, fh)
            raise
        finally:
            conn.close()
        counts.update(images=tally.images, records=tally.records, format=fmt,
                      datasets=len(tally.records_by_dataset),
                      seconds=round(time.monotonic() - t0, 2))
    say(f"export: {tally.images:,} images of {tally.records:,} records "
        f"({len(tally.records_by_dataset):,} datasets) -> {out} ({fmt}), "
        f"{citation.DERIVED_NAME}, {citation.CITATION_NAME}", echo)
    return ExportSummary(out, fmt, tally.images, tally.records, len(tally.records_by_dataset), doi)


def _write_manifest(conn: sqlite3.Connection, fh: BinaryIO, fmt: str, filters: Filters,
                    stop: threading.Event, counts: dict) -> citation.Tally:
    """Stream the manifest into ``fh``, keeping ``counts`` (the run's) current; the
    tally of what was written."""
    src = manifest.prepare(conn, filters)
    tally = citation.Tally()

    def counted() -> Iterator[pa.RecordBatch]:
        for batch in manifest.batches(conn, filters, src):
            if stop.is_set():
                raise Interrupted("stopped by a signal; nothing was written, run the same "
                                  "command again")
            tally.add(batch)
            counts.update(images=tally.images, records=tally.records)
            yield batch

    manifest.write_stream(fh, fmt, _ahead(counted()))
    return tally


def read_table(db: Path, filters: Filters = Filters()) -> pa.Table:
    """The manifest as one Arrow table (for read_manifest: the caller asked for all of it)."""
    conn = _open(Path(db), force=False)
    try:
        src = manifest.prepare(conn, filters)
        return pa.Table.from_batches(list(manifest.batches(conn, filters, src)), manifest.SCHEMA)
    finally:
        conn.close()
