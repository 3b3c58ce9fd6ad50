"""occurrence.txt of a GBIF download: datasetKey, occurrenceID, institutionCode per gbifID, DOI."""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..db import occurrences
from ..db.connection import transaction
from ..db.meta import set_meta
from ..db.sqlite import sqlite3
from ..errors import InputError
from ..progress import RunContext

# Only these of occurrence.txt's ~250 columns are parsed (pyarrow skips the rest).
COLUMNS = ("gbifID", "datasetKey", "occurrenceID", "institutionCode")
REQUIRED = ("gbifID", "datasetKey")
BLOCK_BYTES = 8 << 20  # parsed block: memory stays flat whatever the file's size

# A GBIF download's DOI (10.15468/dl.xxxxxx), else any DOI in the metadata.
_DOWNLOAD_DOI = re.compile(rb"10\.15468/dl\.[A-Za-z0-9]+")
_ANY_DOI = re.compile(rb"\b10\.\d{4,9}/[^\s\"<>&]+")
METADATA_NAMES = ("metadata.xml", "eml.xml")


@dataclass
class OccurrenceStats:
    rows: int = 0  # data rows read
    kept: int = 0  # rows of gbifIDs that have images
    bad: int = 0  # rows that could not be parsed or have no numeric gbifID
    doi: str | None = None


@dataclass(frozen=True)
class OccurrenceSource:
    """occurrence.txt inside a DwC-A zip (member set) or an unpacked file."""

    path: Path
    member: str | None = None

    @contextmanager
    def open(self) -> Iterator[BinaryIO]:
        try:
            if self.member is None:
                with open(self.path, "rb") as f:
                    yield f
            else:
                with zipfile.ZipFile(self.path) as z, z.open(self.member) as f:
                    yield f  # type: ignore[misc]
        except (OSError, zipfile.BadZipFile) as e:
            raise InputError(f"cannot read {self.path}: {e}") from None

    def metadata(self) -> bytes | None:
        """The archive's metadata (EML) beside occurrence.txt, when there is one."""
        try:
            if self.member is None:
                for name in METADATA_NAMES:
                    p = self.path.with_name(name)
                    if p.is_file():
                        return p.read_bytes()
                return None
            with zipfile.ZipFile(self.path) as z:
                names = {n.rsplit("/", 1)[-1].lower(): n for n in z.namelist()}
                for name in METADATA_NAMES:
                    if name in names:
                        return z.read(names[name])
        except (OSError, zipfile.BadZipFile):
            return None
        return None


def find(multimedia: Path | None, occurrence: Path | None,
         warn: Callable[[str], None]) -> OccurrenceSource | None:
    """What to read: ``--occurrence FILE``, else occurrence.txt of a DwC-A zip input
    (``multimedia`` is None when only occurrences are added to a built database).

    A bad ``--occurrence`` file is an error; the zip's own occurrence.txt without the
    columns is only a warning (the images do not depend on it)."""
    if occurrence is not None:
        if not occurrence.is_file():
            raise InputError(f"--occurrence {occurrence}: no such file")
        src = OccurrenceSource(occurrence)
    elif multimedia is None or not zipfile.is_zipfile(multimedia):
        return None
    else:
        with zipfile.ZipFile(multimedia) as z:
            hits = [n for n in z.namelist() if n.rsplit("/", 1)[-1].lower() == "occurrence.txt"]
        if not hits:
            return None
        src = OccurrenceSource(multimedia, hits[0])
    try:
        with src.open() as f:
            _header(f, src.path)
    except InputError as e:
        if occurrence is not None:
            raise
        warn(f"warning: {e}; the export will have no datasetKey/occurrenceID")
        return None
    return src


def parse_doi(metadata: bytes | None) -> str | None:
    """The download's DOI from its EML: a GBIF download DOI first, else the first DOI."""
    if not metadata:
        return None
    m = _DOWNLOAD_DOI.search(metadata) or _ANY_DOI.search(metadata)
    return m.group(0).decode("ascii", "replace").rstrip(".,;") if m else None


def _header(f: BinaryIO, path: Path) -> list[str]:
    try:
        header = f.readline(1 << 20).rstrip(b"\r\n").decode("utf-8", "replace").split("\t")
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise InputError(f"{path}: occurrence.txt has no {', '.join(missing)} column "
                         f"(header starts {', '.join(header[:4])})")
    return header


def _batches(f: BinaryIO, path: Path, stats: OccurrenceStats) -> Iterator[pa.RecordBatch]:
    header = _header(f, path)

    def skip(_row: object) -> str:
        stats.bad += 1
        return "skip"

    # GBIF's tab files are unquoted: a quote is text, never a delimiter.
    reader = pacsv.open_csv(
        f, read_options=pacsv.ReadOptions(column_names=header, block_size=BLOCK_BYTES),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False,
                                         invalid_row_handler=skip),
        convert_options=pacsv.ConvertOptions(
            include_columns=[c for c in COLUMNS if c in header],
            column_types={c: pa.string() for c in COLUMNS}, strings_can_be_null=True,
            null_values=[""]))
    try:
        yield from reader
    except (pa.ArrowInvalid, OSError, zipfile.BadZipFile) as e:
        raise InputError(f"cannot read {path}: {e}") from None


def rows_of(batch: pa.RecordBatch, stats: OccurrenceStats) -> list[list]:
    """[gbifID, datasetKey, occurrenceID, institutionCode] of the rows with a numeric gbifID."""
    stats.rows += batch.num_rows
    gid = batch.column("gbifID")
    ok = pc.fill_null(pc.utf8_is_digit(gid), False)
    ok = pc.and_(ok, pc.less_equal(pc.utf8_length(gid), 18))  # fits int64
    stats.bad += batch.num_rows - pc.sum(ok).as_py() if batch.num_rows else 0
    cols = [pc.cast(gid.filter(ok), pa.int64())]
    for name in COLUMNS[1:]:
        cols.append(batch.column(name).filter(ok) if name in batch.schema.names
                    else pa.nulls(len(cols[0]), pa.string()))
    return [list(r) for r in zip(*(c.to_pylist() for c in cols), strict=True)]


def load(conn: sqlite3.Connection, src: OccurrenceSource, ctx: RunContext) -> OccurrenceStats:
    """Store the occurrences of gbifIDs that have images, one transaction per block
    (idempotent: a re-run replaces), and the download's DOI in meta."""
    stats = OccurrenceStats(doi=parse_doi(src.metadata()))
    where = f"{src.path}" + (f" ({src.member})" if src.member else "")
    ctx.say(f"occurrences: {where}")
    with src.open() as f:
        for batch in _batches(f, src.path, stats):
            rows = rows_of(batch, stats)
            with transaction(conn):
                before = conn.total_changes
                conn.execute(occurrences.UPSERT, {"rows": json.dumps(rows)})
                stats.kept += conn.total_changes - before
            ctx.check_stop()
    if stats.doi:
        with transaction(conn):
            set_meta(conn, occurrences.META_DOI, stats.doi)
    ctx.say(f"occurrences: {stats.rows:,} rows, {stats.kept:,} of gbifIDs with images kept, "
            f"{stats.bad:,} unreadable; download DOI: {stats.doi or 'not found'}")
    return stats
