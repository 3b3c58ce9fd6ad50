"""Malformed multimedia.txt through the real ingest: never a traceback, a documented exit
code with a one-line message, and every line ingested or counted under a skip reason.

Beyond tests/test_malformed_input.py (well-formed lines with bad values): whole files of
random bytes, headers that are reordered, missing, duplicated, BOM-prefixed or CRLF/CR
terminated, lines with lone CRs, NULs, quotes, stray tabs, invalid UTF-8 and fields larger
than a read chunk, checked against an exact model of the first skip reasons (blank line,
field count, UTF-8 of the used columns, gbifID syntax).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import sqlite3
import threading
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from download_db.cli.main import init_main
from download_db.ingest import group, reader
from download_db.web import keys
from tests.reliability._support import SOAK, init_cmd, integrity, run, scaled

pytestmark = pytest.mark.timeout(300 * SOAK)

HEADER = ["gbifID", "type", "format", "identifier", "references", "title", "description",
          "source", "audience", "created", "creator", "contributor", "publisher", "license",
          "rightsHolder"]
USED = set(reader.WANTED)
SKIP_REASONS = {
    reader.SKIP_FIELD_COUNT, reader.SKIP_UTF8, reader.SKIP_BLANK, group.SKIP_GBIF,
    group.SKIP_SOUND, group.SKIP_MOVING, group.SKIP_HTML, group.SKIP_NOT_IMAGE,
    group.SKIP_OVERLONG, keys.SKIP_EMPTY, keys.SKIP_NONE, keys.SKIP_SCHEME, keys.SKIP_URL}
BOM = b"\xef\xbb\xbf"
PROG = "init_download_db.py: "
# exit codes README documents for input problems; 70 (internal error) is always a bug
INPUT_EXITS = {0, 2}
HUGE = b"\x00HUGE\x00"  # expands to a field larger than a 1 MiB read chunk


# --------------------------------------------------------------------------- running


class _ThreadErrors:
    """Exceptions that escape any thread (a traceback a user would see on stderr)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __enter__(self):
        self._old = threading.excepthook
        threading.excepthook = lambda a: self.seen.append(f"{a.exc_type.__name__}: {a.exc_value}")
        return self

    def __exit__(self, *exc: object) -> None:
        threading.excepthook = self._old


def ingest_bytes(directory: Path, data: bytes, name: str = "multimedia.txt",
                 *extra: str) -> tuple[int, str, Path]:
    """(exit code, stderr, db) of init_main on these bytes; stdout is dropped."""
    path = directory / name
    path.write_bytes(data)
    db = directory / "download_status.db"
    err = io.StringIO()
    with _ThreadErrors() as threads, contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        rc = init_main(["--db", str(db), "--multimedia", str(path), "--no-bar", *extra])
    assert not threads.seen, threads.seen
    return rc, err.getvalue(), db


def assert_clean_exit(rc: int, stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert rc in INPUT_EXITS, f"exit {rc}: {stderr}"
    if rc:
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(PROG + "error: "), stderr


def ingest_counts(db: Path) -> dict:
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        ((counts,),) = c.execute("SELECT counts FROM runs WHERE stage = 'ingest' "
                                 "AND outcome = 'ok'").fetchall()
        (images,) = c.execute("SELECT count(*) FROM images").fetchone()
        (n_images,) = c.execute("SELECT coalesce(sum(n_images), 0) FROM gbif_ids").fetchone()
    finally:
        c.close()
    ing = json.loads(counts)["ingest"]
    assert ing["images"] == images == n_images
    return ing


# --------------------------------------------------------------------------- model


def split_lines(body: bytes) -> list[bytes]:
    """The data lines as the tool counts them: split on \\n, a last line without its \\n
    still counts, one trailing \\r per line belongs to the line end."""
    if not body:
        return []
    parts = body.split(b"\n")
    if parts[-1] == b"":
        parts.pop()
    return [p[:-1] if p.endswith(b"\r") else p for p in parts]


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_PLAIN_GID = set(b"0123456789abcdefxyzABC .-")


def model(header: list[str], body: bytes) -> dict[str, int | tuple[int, int]]:
    """Exact counts of the first skip reasons, and bounds for bad_gbif_id."""
    ncols = len(header)
    used = [i for i, n in enumerate(header) if n in USED]
    gid_col = header.index("gbifID")
    out = Counter()
    gid_bad = gid_unsure = 0
    for line in split_lines(body):
        if not line:
            out[reader.SKIP_BLANK] += 1
            continue
        fields = line.split(b"\t")
        if len(fields) != ncols:
            out[reader.SKIP_FIELD_COUNT] += 1
            continue
        if not all(_utf8(fields[i]) for i in used):
            out[reader.SKIP_UTF8] += 1
            continue
        out["rest"] += 1
        g = fields[gid_col]
        if set(g) <= _PLAIN_GID:
            s = g.strip(b" ")
            gid_bad += not (s.isdigit() and 1 <= len(s) <= 18)
        else:
            gid_unsure += 1
    return {**out, "gid": (gid_bad, gid_bad + gid_unsure)}


# --------------------------------------------------------------------------- strategies

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12).map(
    lambda s: s.encode("utf-8"))
_NASTY = st.sampled_from([
    b"", b" ", b'"', b'""', b"'", b'"quoted\ttab"', b"\r", b"a\rb", b"\x00", b"\x00\x00\x00",
    b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\\", b"\\t", b"NULL", b"None",
    b"\x85\xe2\x80\xa8", b"\x1e\x1f", "é東\U0001f600".encode(), b"\t", b"\t\t"])
_GID = st.one_of(st.integers(0, 10**19).map(lambda i: str(i).encode()),
                 st.sampled_from([b"", b" 42 ", b"12a", b"-5", b"1.0", b"1 2", b"0x10",
                                  "١٢٣".encode(), b"\xff1", b"1234567890123456789", b"007"]))
_URL = st.sampled_from([
    b"https://h.example/a.jpg", b"http://H.Example:80/b.JPG#x", b"https://h.example/None",
    b"ftp://h.example/c.jpg", b"", b"  ", b"https:/broken", b"https://bad host/x",
    b"https://h.example/" + b"a" * 5000, b"https://h.example/\"q\".jpg",
    b"https://iiif.example/iiif/X1/full/max/0/default.jpg", b"https://iiif.example/iiif/X1/info.json",
    b"https://h.example/\xff.jpg", b"https://h.example:99999/x", b"javascript:alert(1)"])
_TYPE = st.sampled_from([b"StillImage", b"Sound", b" sound ", b"MovingImage", b"",
                         b"InteractiveResource", b"\xff"])
_FMT = st.sampled_from([b"image/jpeg", b"text/html", b"TEXT/HTML; charset=x", b"audio/mpeg",
                        b"application/pdf", b"", b"image/png", b"\x00"])


@st.composite
def _header(draw) -> list[str]:
    """A header: any order, extra and duplicated unused columns, optional ones missing."""
    cols = list(HEADER)
    cols = [c for c in cols if c in ("gbifID", "identifier") or draw(st.booleans())
            or c not in USED]
    cols += draw(st.lists(st.sampled_from(["title", "description", "x", "", " ", "gbifid",
                                           "Identifier", "é"]), max_size=3))
    return draw(st.permutations(cols))


@st.composite
def _line(draw, header: list[str]) -> bytes:
    kind = draw(st.sampled_from(["row", "row", "row", "row", "blank", "cr", "short", "long",
                                 "junk", "huge"]))
    if kind == "blank":
        return b""
    if kind == "cr":
        return b"\r"
    if kind == "junk":
        return draw(st.binary(max_size=60)).replace(b"\n", b"")
    values = {"gbifID": draw(_GID), "identifier": draw(_URL), "type": draw(_TYPE),
              "format": draw(_FMT)}
    fields = [values.get(n) if n in values else draw(st.one_of(_TEXT, _NASTY))
              for n in header]
    if kind == "huge":  # one field (any column, used or not) larger than a read chunk
        fields[draw(st.integers(0, len(fields) - 1))] = HUGE
    elif kind == "short":
        fields = fields[: draw(st.integers(0, len(fields) - 1))]
    elif kind == "long":
        fields.append(draw(st.one_of(_TEXT, _NASTY)))
    return b"\t".join(fields).replace(b"\n", b"")


@st.composite
def structured_file(draw) -> tuple[list[str], bytes, bytes]:
    """(header names, header bytes, body bytes)."""
    header = draw(_header())
    bom = draw(st.sampled_from([b"", b"", BOM]))
    head_end = draw(st.sampled_from([b"\n", b"\r\n"]))
    lines = draw(st.lists(st.tuples(_line(header), st.sampled_from([b"\n", b"\n", b"\r\n",
                                                                     b"\r\r\n"])),
                          max_size=30))
    body = b"".join(content + end for content, end in lines)
    if lines and draw(st.booleans()):
        body = body.rstrip(b"\r\n")  # no newline at the end of the file
    head = bom + "\t".join(header).encode() + head_end
    return header, head, body


def _expand(data: bytes) -> bytes:
    return data.replace(HUGE, b"y" * (1_500_000))


# --------------------------------------------------------------------------- properties


@settings(max_examples=scaled(150), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(f=structured_file(), gz=st.booleans(), small_chunks=st.booleans())
def test_every_line_is_ingested_or_counted(tmp_path_factory, f, gz, small_chunks) -> None:
    header, head, body = f
    head, body = _expand(head), _expand(body)
    data = head + body
    name = "multimedia.txt"
    if gz:
        data, name = gzip.compress(data, compresslevel=1), "multimedia.txt.gz"
    extra = ("--chunk-mb", "1") if small_chunks else ()
    rc, err, db = ingest_bytes(tmp_path_factory.mktemp("mm"), data, name, *extra)
    assert_clean_exit(rc, err)
    if not body.strip(b"\r\n"):  # a header and nothing else: an input error, not 0 rows
        assert rc == 2 and "no data lines" in err, err
        return
    assert rc == 0, err  # gbifID and identifier are always in these headers, once
    ing = ingest_counts(db)
    assert integrity(db) == "ok"
    m = model(header, body)
    assert ing["lines"] == len(split_lines(body))
    assert ing["lines"] == ing["rows_ok"] + sum(ing["skips"].values())
    assert set(ing["skips"]) <= SKIP_REASONS, ing["skips"]
    for reason in (reader.SKIP_BLANK, reader.SKIP_FIELD_COUNT, reader.SKIP_UTF8):
        assert ing["skips"].get(reason, 0) == m.get(reason, 0), (reason, ing["skips"], m)
    lo, hi = m["gid"]
    assert lo <= ing["skips"].get(group.SKIP_GBIF, 0) <= hi, (ing["skips"], m)
    assert ing["rows_ok"] <= m.get("rest", 0) - lo
    assert ing["images"] <= ing["rows_ok"]


@settings(max_examples=scaled(150), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(
    st.binary(max_size=3000),
    st.binary(max_size=2000).map(lambda b: ("\t".join(HEADER) + "\n").encode() + b),
    st.binary(max_size=2000).map(lambda b: BOM + ("\t".join(HEADER) + "\r\n").encode() + b),
    st.lists(st.sampled_from([b"gbifID", b"identifier", b"\t", b"\n", b"\r", b"1", b"\xff",
                              b"https://h.example/a.jpg", b"\x00", BOM, b'"']),
             max_size=200).map(b"".join)))
def test_random_bytes_never_crash(tmp_path_factory, data) -> None:
    rc, err, db = ingest_bytes(tmp_path_factory.mktemp("rb"), data)
    assert_clean_exit(rc, err)
    if rc == 0:
        ing = ingest_counts(db)
        assert ing["lines"] == ing["rows_ok"] + sum(ing["skips"].values())
        assert set(ing["skips"]) <= SKIP_REASONS
        first = data.find(b"\n")
        body = b"" if first < 0 else data[first + 1:]
        assert ing["lines"] == len(split_lines(body))
        assert integrity(db) == "ok"
    else:
        assert not db.exists(), "an input error left a database behind"


# --------------------------------------------------------------------------- explicit


def _hdr(names: list[str], end: bytes = b"\n") -> bytes:
    return "\t".join(names).encode() + end


def _row(gid: str, url: str, n: int = len(HEADER)) -> bytes:
    f = [b""] * n
    f[0], f[1], f[2], f[3] = gid.encode(), b"StillImage", b"image/jpeg", url.encode()
    return b"\t".join(f)


# (id, bytes, expected exit, text in the message or expected (lines, rows_ok))
CASES = [
    ("missing-header", _row("1", "https://h.example/a.jpg") + b"\n", 2, "gbifID"),
    ("duplicate-gbifID", _hdr(HEADER + ["gbifID"]) + b"1\n", 2, "twice"),
    ("duplicate-identifier", _hdr(HEADER + ["identifier"]), 2, "twice"),
    ("coreid-and-gbifID", _hdr(["coreid"] + HEADER), 2, "twice"),
    ("header-not-utf8", b"gbifID\tidentifier\xff\n", 2, "UTF-8"),
    ("double-bom", BOM + BOM + _hdr(HEADER), 2, "gbifID"),
    ("nul-file", b"\x00" * 5000, 2, "gbifID"),
    ("png-file", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, 2, "UTF-8"),
    ("only-cr-line-ends", _hdr(HEADER, b"\r") + _row("1", "https://h.example/a.jpg") + b"\r",
     2, "line ends are carriage returns only"),
    ("header-only-crlf", BOM + _hdr(HEADER, b"\r\n"), 2, "no data lines"),
    ("header-and-blank-lines", _hdr(HEADER) + b"\n\n\r\n", 2, "no data lines"),
    ("crlf-everywhere", _hdr(HEADER, b"\r\n") + _row("1", "https://h.example/a.jpg") +
     b"\r\n" + b"\r\n" + _row("2", "https://h.example/b.jpg") + b"\r\n", 0, (3, 2)),
    ("lone-cr-inside-a-line", _hdr(HEADER) + _row("1", "https://h.example/a\rb.jpg") + b"\n" +
     _row("2", "https://h.example/c.jpg") + b"\n", 0, (2, None)),
    ("cr-cr-lf", _hdr(HEADER) + _row("1", "https://h.example/a.jpg") + b"\r\r\n", 0, (1, None)),
    ("one-line-bigger-than-the-chunk", _hdr(HEADER) + _row("1", "https://h.example/" +
                                                          "a" * 3_000_000) + b"\n" +
     _row("2", "https://h.example/b.jpg") + b"\n", 0, (2, 1)),
    ("gbifID-run-over-chunks", _hdr(HEADER) + b"".join(
        _row("7", f"https://h.example/{i}-{'p' * 2000}.jpg") + b"\n" for i in range(1200)),
     0, (1200, 1200)),
    ("nul-in-used-field", _hdr(HEADER) + _row("1", "https://h.example/\x00.jpg") + b"\n", 0,
     (1, None)),
]


def _case(c):
    if hasattr(c, "marks"):  # already a pytest.param: its first value is the id
        return pytest.param(*c.values[1:], id=c.values[0], marks=c.marks)
    return pytest.param(*c[1:], id=c[0])


@pytest.mark.parametrize(("data", "code", "expect"), [_case(c) for c in CASES])
def test_hostile_file_through_the_cli(tmp_path, data, code, expect) -> None:
    """The real command: exit code, one line on stderr, nothing half-built on an error."""
    path = tmp_path / "multimedia.txt"
    path.write_bytes(data)
    db = tmp_path / "d.db"
    r = run(init_cmd(db, "--multimedia", str(path), "--chunk-mb", "1"))
    assert_clean_exit(r.returncode, r.stderr)
    assert r.returncode == code, r.stderr
    if code:
        assert expect in r.stderr
        assert not db.exists()
        return
    ing = ingest_counts(db)
    lines, rows_ok = expect
    assert ing["lines"] == lines == ing["rows_ok"] + sum(ing["skips"].values())
    if rows_ok is not None:
        assert ing["rows_ok"] == rows_ok, ing
    assert integrity(db) == "ok"


def test_a_directory_and_a_missing_file_are_one_line_errors(tmp_path) -> None:
    for target, words in ((tmp_path, "not a file"), (tmp_path / "nope.txt", "not found")):
        r = run(init_cmd(tmp_path / "d.db", "--multimedia", str(target)))
        assert_clean_exit(r.returncode, r.stderr)
        assert r.returncode == 2 and words in r.stderr, r.stderr
