"""Streaming multimedia.txt input: open txt/gz/DwC-A zip, map the header, cut chunks, parse rows."""

from __future__ import annotations

import gzip
import io
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv

from ..errors import InputError

# Columns we use, by GBIF header name (the position differs between downloads).
COL_GBIF = "gbifID"
COL_IDENT = "identifier"
WANTED = ("gbifID", "type", "format", "identifier", "license", "rightsHolder", "creator",
          "publisher")
REQUIRED = (COL_GBIF, COL_IDENT)
ALIASES = {"coreid": COL_GBIF}

SKIP_FIELD_COUNT = "wrong_field_count"
SKIP_UTF8 = "broken_utf8"
SKIP_BLANK = "blank_line"

CHUNK_BYTES = 8 << 20
_READ_ERRORS = (OSError, EOFError, zlib.error, zipfile.BadZipFile, gzip.BadGzipFile)


@dataclass(frozen=True)
class Header:
    names: list[str]  # column names as used for parsing (duplicates renamed)
    index: dict[str, int]  # wanted column -> position
    data_offset: int  # byte offset of the first data line

    @property
    def ncols(self) -> int:
        return len(self.names)


@dataclass
class Chunk:
    start: int  # byte offset of the chunk's first line in the uncompressed stream
    end: int  # byte offset just past the chunk (where a resume starts)
    data: bytes


@dataclass
class ParsedChunk:
    table: pa.Table  # WANTED columns as strings (missing optional ones as "")
    lines: int  # physical lines in the chunk
    skips: dict[str, int]
    samples: dict[str, list[str]]


class Source:
    """A multimedia.txt, .txt.gz, or a DwC-A .zip holding multimedia.txt."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"multimedia file not found: {self.path}")
        if not self.path.is_file():
            raise InputError(f"not a file: {self.path}")
        self.kind = self._detect()
        self.member: str | None = None
        if self.kind == "zip":
            self.member = self._find_member()
        self.header = self._read_header()

    def _detect(self) -> str:
        try:
            with open(self.path, "rb") as f:
                magic = f.read(4)
        except OSError as e:
            raise InputError(f"cannot read {self.path}: {e.strerror}") from None
        if magic[:2] == b"\x1f\x8b":
            return "gz"
        if magic == b"PK\x03\x04" or self.path.suffix.lower() == ".zip":
            return "zip"
        return "txt"

    def _find_member(self) -> str:
        try:
            with zipfile.ZipFile(self.path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise InputError(f"not a readable zip archive: {self.path} ({e})") from None
        hits = [n for n in names if n.rsplit("/", 1)[-1].lower() == "multimedia.txt"]
        if not hits:
            listing = ", ".join(names[:10]) or "(empty)"
            raise InputError(f"no multimedia.txt in {self.path} (members: {listing})")
        return hits[0]

    @property
    def total_bytes(self) -> int:
        """Uncompressed size when known cheaply, else the file size."""
        if self.kind == "zip":
            with zipfile.ZipFile(self.path) as z:
                return z.getinfo(self.member or "").file_size
        return self.path.stat().st_size

    def open(self) -> BinaryIO:
        try:
            if self.kind == "gz":
                return gzip.open(self.path, "rb")  # type: ignore[return-value]
            if self.kind == "zip":
                z = zipfile.ZipFile(self.path)
                return z.open(self.member or "")  # type: ignore[return-value]
            return open(self.path, "rb", buffering=0)
        except _READ_ERRORS as e:
            raise InputError(f"cannot read {self.path}: {e}") from None

    def _read_header(self) -> Header:
        f = self.open()
        try:
            line = _safe_read(f, self.path, lambda: f.readline(1 << 20))
        finally:
            f.close()
        if not line.strip():
            raise InputError(f"{self.path} is empty: expected a header line starting with gbifID")
        try:
            text = line.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InputError(f"{self.path}: header line is not UTF-8") from None
        if "\r" in text.rstrip("\r\n"):
            # the whole file would read as one header line that holds every row
            raise InputError(f"{self.path}: its line ends are carriage returns only (an old Mac "
                             "export?); convert them first: tr '\\r' '\\n' < IN > OUT")
        raw = text.rstrip("\r\n").split("\t")
        names: list[str] = []
        index: dict[str, int] = {}
        for i, name in enumerate(raw):
            n = ALIASES.get(name.strip(), name.strip())
            if n in WANTED:
                if n in index:
                    raise InputError(f"{self.path}: column {n!r} appears twice in the header")
                index[n] = i
                names.append(n)
            else:
                names.append(f"_col{i}")  # unused: keep the position, avoid name clashes
        missing = [c for c in REQUIRED if c not in index]
        if missing:
            raise InputError(
                f"{self.path}: header has no {' / '.join(missing)} column; is this a GBIF "
                f"multimedia.txt? (header starts: {text[:80].strip()!r})")
        return Header(names, index, len(line))

    def require_lines(self) -> None:
        """Refuse a file with a header and no data line (only line ends after it): an
        empty download, or the wrong file; an ingest of it would "succeed" with 0 rows."""
        f = self.open()
        try:
            _skip_to(f, self.header.data_offset, self.path)
            if _safe_read(f, self.path, lambda: _any_line(f)):
                return
        finally:
            f.close()
        raise InputError(f"{self.path} has a header line but no data lines: nothing to "
                         "ingest (an empty GBIF download, or the wrong file?)")

    def chunks(self, start: int | None = None, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Chunk]:
        """Chunks of whole gbifID runs from ``start`` (default: first data line)."""
        pos = self.header.data_offset if start is None else start
        f = self.open()
        try:
            _skip_to(f, pos, self.path)
            yield from _cut(f, pos, chunk_bytes, self.path)
        finally:
            f.close()


def _any_line(f: BinaryIO) -> bool:
    """Is there anything but line ends from here on? (Stops at the first byte that is.)"""
    while block := f.read(1 << 16):
        if block.strip(b"\r\n"):
            return True
    return False


def _safe_read(f: BinaryIO, path: Path, fn):
    try:
        return fn()
    except _READ_ERRORS as e:
        raise InputError(f"cannot read {path}: {e}") from None


def _skip_to(f: BinaryIO, pos: int, path: Path) -> None:
    if pos == 0:
        return
    if f.seekable() and not isinstance(f, (gzip.GzipFile, zipfile.ZipExtFile)):
        f.seek(pos)
        return
    left = pos
    while left:  # compressed streams: decompress and drop
        try:
            got = f.read(min(left, 16 << 20))
        except _READ_ERRORS as e:
            raise InputError(f"cannot read {path}: {e}") from None
        if not got:
            raise InputError(f"{path} is shorter than the recorded resume point; "
                             "was the input replaced? Use --reset to rebuild")
        left -= len(got)


def _run_start(buf: bytes, end: int) -> int:
    """Offset of the first line of the last gbifID run in buf[:end] (end after a \\n)."""
    last_nl = buf.rfind(b"\n", 0, end - 1)
    line_start = last_nl + 1
    tab = buf.find(b"\t", line_start, end)
    gid = buf[line_start:tab if tab >= 0 else end - 1]
    prefix = gid + b"\t"
    while line_start > 0:
        prev_nl = buf.rfind(b"\n", 0, line_start - 1)
        prev_start = prev_nl + 1
        if not buf.startswith(prefix, prev_start):
            break
        line_start = prev_start
    return line_start


def _cut(f: BinaryIO, pos: int, chunk_bytes: int, path: Path) -> Iterator[Chunk]:
    buf = b""
    eof = False
    while not eof or buf:
        if not eof:
            more = _safe_read(f, path, lambda: f.read(chunk_bytes))
            if more:
                buf += more
            else:
                eof = True
        if eof:
            if buf:
                data = buf if buf.endswith(b"\n") else buf + b"\n"
                yield Chunk(pos, pos + len(buf), data)
            return
        end = buf.rfind(b"\n") + 1
        if end == 0:
            continue  # one enormous line: keep reading
        cut = _run_start(buf, end)
        if cut == 0:
            continue  # a single gbifID run fills the buffer: read more
        yield Chunk(pos, pos + cut, buf[:cut])
        pos += cut
        buf = buf[cut:]


def _parse_options(bad: list[str]) -> pacsv.ParseOptions:
    def on_invalid(row) -> str:
        bad.append(row.text or "")
        return "skip"

    return pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False,
                              newlines_in_values=False, ignore_empty_lines=True,
                              invalid_row_handler=on_invalid)


def parse_chunk(data: bytes, header: Header, *, fast: bool = True) -> ParsedChunk:
    """Parse one chunk into WANTED string columns, counting unparseable lines."""
    lines = data.count(b"\n")
    if fast:
        arrow_data = data
        if b"\r" in data:
            arrow_data = data.replace(b"\r\n", b"\n")
            fast = b"\r" not in arrow_data  # a lone CR: pyarrow would split the line there
        # pyarrow strips a leading BOM; and on invalid UTF-8 in a line it must
        # reject for its field count, it prints a traceback: leave both to the
        # exact parser.
        fast = fast and not data.startswith(b"\xef\xbb\xbf") and _is_utf8(data)
        if fast:
            parsed = _parse_arrow(arrow_data, header, lines)
            if parsed is not None:
                return parsed
    return _parse_python(data, header, lines)


def _is_utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parse_arrow(data: bytes, header: Header, lines: int) -> ParsedChunk | None:
    bad: list[str] = []
    used = list(header.index)
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=header.names, use_threads=True,
                                           block_size=8 << 20),
            parse_options=_parse_options(bad),
            convert_options=pacsv.ConvertOptions(
                include_columns=used, column_types={c: pa.string() for c in used},
                strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None  # broken UTF-8 somewhere: the exact per-line path will count it
    blank = lines - table.num_rows - len(bad)
    if blank < 0:
        return None
    skips = {k: v for k, v in ((SKIP_FIELD_COUNT, len(bad)), (SKIP_BLANK, blank)) if v}
    samples = {SKIP_FIELD_COUNT: [b[:200] for b in bad[:3]]} if bad else {}
    return ParsedChunk(_complete(table, header), lines, skips, samples)


def _parse_python(data: bytes, header: Header, lines: int) -> ParsedChunk:
    """Exact per-line parser: split on \\n and \\t only; decode only used fields."""
    ncols = header.ncols
    wanted = list(header.index.items())
    cols: dict[str, list[str]] = {name: [] for name, _ in wanted}
    skips: dict[str, int] = {}
    samples: dict[str, list[str]] = {}

    def skip(reason: str, line: bytes) -> None:
        skips[reason] = skips.get(reason, 0) + 1
        s = samples.setdefault(reason, [])
        if len(s) < 3:
            s.append(line[:200].decode("utf-8", "replace"))

    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    for line in parts:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            skips[SKIP_BLANK] = skips.get(SKIP_BLANK, 0) + 1
            continue
        fields = line.split(b"\t")
        if len(fields) != ncols:
            skip(SKIP_FIELD_COUNT, line)
            continue
        try:
            values = [fields[i].decode("utf-8") for _, i in wanted]
        except UnicodeDecodeError:
            skip(SKIP_UTF8, line)
            continue
        for (name, _), v in zip(wanted, values, strict=False):
            cols[name].append(v)
    table = pa.table({name: pa.array(v, pa.string()) for name, v in cols.items()})
    return ParsedChunk(_complete(table, header), lines, skips, samples)


def _complete(table: pa.Table, header: Header) -> pa.Table:
    """Add empty columns for optional fields this file does not have."""
    for name in WANTED:
        if name not in header.index:
            table = table.append_column(name, pa.array([""] * table.num_rows, pa.string()))
    return table.select(list(WANTED))
