"""download_db.ingest.reader: header by name, txt/gz/zip inputs, chunks, fast == slow parse."""

from __future__ import annotations

import gzip
import random
import sys
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from download_db.errors import InputError
from download_db.ingest import reader
from download_db.ingest.reader import Source, parse_chunk

MULTIMEDIA = Path(__file__).parent / "data" / "multimedia"
GHANA = MULTIMEDIA / "gbif_2017_oldcolumnorder_ghana_herbaria_multimedia.txt"
NORWAY = MULTIMEDIA / "gbif_2021_norway_birds_multimedia.txt"

# Current GBIF column order (2021 Norway download) and the older one (2017 Ghana download).
HEADER = ["gbifID", "type", "format", "identifier", "references", "title", "description",
          "source", "audience", "created", "creator", "contributor", "publisher", "license",
          "rightsHolder"]
OLD_HEADER = ["gbifID", "type", "format", "identifier", "references", "title", "description",
              "created", "creator", "contributor", "publisher", "audience", "source", "license",
              "rightsHolder"]
BOM = b"\xef\xbb\xbf"

# The pyarrow fast path cannot decode the text of a wrong-field-count line holding invalid
# UTF-8 for its invalid-row handler; pyarrow reports that as an "unraisable" exception (see
# test_fast_path_is_silent_on_wrong_field_count_line_with_broken_utf8). Counts stay right, so
# the property tests, which generate such lines constantly, silence the resulting warning.
_UNRAISABLE = "ignore::pytest.PytestUnraisableExceptionWarning"


# --------------------------------------------------------------------------- helpers

def fields(gid: str = "1", identifier: str = "https://h.example/a.jpg", *,
           header: list[str] = HEADER, **values: str) -> list[str]:
    """A row for ``header`` with gbifID, identifier and any other column given by name."""
    values = {"gbifID": gid, "identifier": identifier, "type": "StillImage",
              "format": "image/jpeg", **values}
    return [values.get(name, "") for name in header]


def line(*args: str, **kw: str) -> bytes:
    return "\t".join(fields(*args, **kw)).encode("utf-8")


def raw_line(parts: list[bytes]) -> bytes:
    return b"\t".join(parts)


def header_bytes(header: list[str] = HEADER) -> bytes:
    return ("\t".join(header) + "\n").encode("utf-8")


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def reference_rows(data: bytes, header_names: list[str]) -> list[dict[str, str]]:
    """Independent by-name parse of well-formed lines (what the reader must produce)."""
    out = []
    for ln in data.split(b"\n"):
        ln = ln[:-1] if ln.endswith(b"\r") else ln
        parts = ln.split(b"\t")
        if len(parts) != len(header_names):
            continue
        rec = dict(zip(header_names, parts, strict=True))
        out.append({name: rec[name].decode("utf-8") if name in rec else ""
                    for name in reader.WANTED})
    return out


def rows_of(parsed: reader.ParsedChunk) -> list[dict[str, str]]:
    return parsed.table.to_pylist()


def assert_same_parse(data: bytes, header: reader.Header) -> tuple[reader.ParsedChunk,
                                                                   reader.ParsedChunk]:
    """fast and slow parses agree, and every \\n-terminated line is accounted for."""
    fast = parse_chunk(data, header, fast=True)
    slow = parse_chunk(data, header, fast=False)
    assert fast.table.column_names == list(reader.WANTED)
    assert slow.table.column_names == list(reader.WANTED)
    assert rows_of(fast) == rows_of(slow)
    assert fast.skips == slow.skips
    assert fast.lines == slow.lines == data.count(b"\n")
    for p in (fast, slow):
        assert all(v > 0 for v in p.skips.values())
        assert p.table.num_rows + sum(p.skips.values()) == p.lines
    return fast, slow


@pytest.fixture(scope="module")
def header(tmp_path_factory) -> reader.Header:
    """The Header of a current-order GBIF multimedia.txt."""
    p = tmp_path_factory.mktemp("hdr") / "multimedia.txt"
    return Source(write(p, header_bytes())).header


# --------------------------------------------------------------------------- header mapping

def test_header_current_column_order_maps_by_name():
    h = Source(NORWAY).header
    assert h.index == {"gbifID": 0, "type": 1, "format": 2, "identifier": 3, "creator": 10,
                       "publisher": 12, "license": 13, "rightsHolder": 14}
    assert h.ncols == 15
    with open(NORWAY, "rb") as f:
        assert h.data_offset == len(f.readline())


def test_header_old_column_order_maps_by_name():
    h = Source(GHANA).header
    assert h.index == {"gbifID": 0, "type": 1, "format": 2, "identifier": 3, "creator": 8,
                       "publisher": 10, "license": 13, "rightsHolder": 14}
    assert h.ncols == 15


@pytest.mark.parametrize("path,names", [(NORWAY, HEADER), (GHANA, OLD_HEADER)],
                         ids=["current-order", "old-order"])
def test_real_downloads_parse_to_by_name_values(path, names):
    src = Source(path)
    data = path.read_bytes()[src.header.data_offset:]
    fast, _ = assert_same_parse(data, src.header)
    expected = reference_rows(data, names)
    assert len(expected) == data.count(b"\n") > 1000
    assert rows_of(fast) == expected
    assert fast.skips == {}


def test_old_order_first_row_takes_creator_from_its_own_position():
    src = Source(GHANA)
    first = next(src.chunks()).data.split(b"\n", 1)[0] + b"\n"
    (row,) = rows_of(parse_chunk(first, src.header))
    assert row["gbifID"] == "1572346279"
    assert row["creator"] == "Thomas Schreiter"  # column 8 here; column 10 is the publisher
    assert row["license"] == "http://creativecommons.org/licenses/by-nc/4.0/"
    assert row["rightsHolder"] == "Thomas Schreiter"


def test_shuffled_header_maps_every_wanted_column(tmp_path):
    names = list(HEADER)
    random.Random(7).shuffle(names)
    values = {n: f"v-{n}" for n in names}
    data = "\t".join(values[n] for n in names).encode() + b"\n"
    src = Source(write(tmp_path / "m.txt", header_bytes(names) + data))
    assert src.header.index == {n: names.index(n) for n in reader.WANTED}
    fast, _ = assert_same_parse(data, src.header)
    assert rows_of(fast) == [{n: f"v-{n}" for n in reader.WANTED}]


def test_header_with_utf8_bom(tmp_path):
    body = line("5", "https://h.example/x.jpg", creator="C") + b"\n"
    src = Source(write(tmp_path / "m.txt", BOM + header_bytes() + body))
    assert src.header.index["gbifID"] == 0
    assert src.header.index == Source(NORWAY).header.index
    assert src.header.data_offset == len(BOM) + len(header_bytes())
    chunks = list(src.chunks())
    assert b"".join(c.data for c in chunks) == body
    assert rows_of(parse_chunk(chunks[0].data, src.header))[0]["gbifID"] == "5"


def test_header_with_crlf_and_padded_names(tmp_path):
    hdr = b"gbifID \t identifier\ttype\tformat\tlicense\trightsHolder\tcreator\r\n"
    src = Source(write(tmp_path / "m.txt", hdr))
    assert src.header.index == {"gbifID": 0, "identifier": 1, "type": 2, "format": 3,
                                "license": 4, "rightsHolder": 5, "creator": 6}
    assert src.header.data_offset == len(hdr)


def test_coreid_alias_maps_to_gbifid(tmp_path):
    hdr = header_bytes(["coreid"] + HEADER[1:])
    src = Source(write(tmp_path / "m.txt", hdr))
    assert src.header.index["gbifID"] == 0
    data = line("77") + b"\n"
    assert rows_of(parse_chunk(data, src.header))[0]["gbifID"] == "77"


def test_optional_columns_missing_become_empty_strings(tmp_path):
    src = Source(write(tmp_path / "m.txt", b"gbifID\tidentifier\n"))
    assert src.header.index == {"gbifID": 0, "identifier": 1}
    fast, _ = assert_same_parse(b"9\thttps://h.example/a.jpg\n", src.header)
    assert rows_of(fast) == [{"gbifID": "9", "type": "", "format": "",
                              "identifier": "https://h.example/a.jpg", "license": "",
                              "rightsHolder": "", "creator": "", "publisher": ""}]


@pytest.mark.parametrize("missing", ["gbifID", "identifier"])
def test_missing_required_column_is_an_input_error(tmp_path, missing):
    names = [n for n in HEADER if n != missing]
    p = write(tmp_path / "m.txt", header_bytes(names) + line() + b"\n")
    with pytest.raises(InputError, match=rf"header has no {missing} column") as e:
        Source(p)
    assert "multimedia.txt" in str(e.value)
    assert "\n" not in str(e.value)


def test_data_line_instead_of_header_is_an_input_error(tmp_path):
    p = write(tmp_path / "m.txt", line("123") + b"\n" + line("124") + b"\n")
    with pytest.raises(InputError, match="header has no gbifID / identifier column"):
        Source(p)


@pytest.mark.parametrize("names", [
    HEADER + ["identifier"],
    ["gbifID", "coreid"] + HEADER[1:],
    HEADER[:-1] + ["license"],
], ids=["identifier-twice", "gbifID-and-coreid", "license-twice"])
def test_wanted_column_twice_is_an_input_error(tmp_path, names):
    p = write(tmp_path / "m.txt", header_bytes(names))
    with pytest.raises(InputError, match="appears twice in the header"):
        Source(p)


def test_unused_column_twice_is_fine(tmp_path):
    names = HEADER + ["title", "title", "references"]
    src = Source(write(tmp_path / "m.txt", header_bytes(names)))
    assert len(set(src.header.names)) == src.header.ncols == 18
    data = "\t".join(fields("3", header=names, title="t", creator="c")).encode() + b"\n"
    fast, _ = assert_same_parse(data, src.header)
    assert rows_of(fast)[0]["creator"] == "c"


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n", b"  \t \n"],
                         ids=["empty", "newline", "crlf", "whitespace"])
def test_empty_file_is_an_input_error(tmp_path, content):
    with pytest.raises(InputError, match="is empty"):
        Source(write(tmp_path / "m.txt", content))


def test_non_utf8_header_is_an_input_error(tmp_path):
    p = write(tmp_path / "m.txt", b"gbifID\tidentifier\xff\n")
    with pytest.raises(InputError, match="not UTF-8"):
        Source(p)


def test_header_only_without_newline_has_no_chunks(tmp_path):
    src = Source(write(tmp_path / "m.txt", b"gbifID\tidentifier"))
    assert src.header.data_offset == len(b"gbifID\tidentifier")
    assert list(src.chunks()) == []


# --------------------------------------------------------------------------- txt / gz / zip

def sample_body(n_ids: int = 120, seed: int = 1) -> bytes:
    """Data lines with runs of one gbifID (1-5 lines each), unique gbifIDs per run."""
    rnd = random.Random(seed)
    out = []
    gid = 10_000
    for _ in range(n_ids):
        gid += rnd.randint(1, 1000)
        for j in range(rnd.choice([1, 1, 2, 3, 5])):
            out.append(line(str(gid), f"https://h{rnd.randrange(3)}.example/{gid}/{j}.jpg",
                            creator=rnd.choice(["", "Å. Ørsted", 'A "quoted" one']),
                            license=rnd.choice(["CC0", "CC BY 4.0"])) + b"\n")
    return b"".join(out)


def make_input(tmp_path: Path, kind: str, text: bytes) -> Path:
    """Write ``text`` (a whole multimedia.txt) as txt, gz, or a DwC-A zip (flat or nested)."""
    if kind == "txt":
        return write(tmp_path / "multimedia.txt", text)
    if kind == "gz":
        return write(tmp_path / "multimedia.txt.gz", gzip.compress(text))
    member = {"zip": "multimedia.txt", "zip-nested": "0012345-250101/multimedia.txt"}[kind]
    p = tmp_path / "dwca.zip"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("meta.xml", "<archive/>")
        z.writestr("occurrence.txt", "gbifID\toccurrenceID\n1\tx\n")
        z.writestr(member, text)
    return p


KINDS = ["txt", "gz", "zip", "zip-nested"]


@pytest.mark.parametrize("kind", KINDS)
def test_all_input_kinds_give_the_same_rows(tmp_path, kind):
    text = NORWAY.read_bytes()
    plain = Source(NORWAY)
    src = Source(make_input(tmp_path, kind, text))
    assert src.kind == kind.split("-")[0]
    assert src.header == plain.header
    if src.kind == "zip":
        assert src.member.endswith("multimedia.txt")
        assert src.total_bytes == len(text)
    got = b"".join(c.data for c in src.chunks(chunk_bytes=4096))
    assert got == text[plain.header.data_offset:]
    assert rows_of(parse_chunk(got, src.header)) == rows_of(
        parse_chunk(text[plain.header.data_offset:], plain.header))


def test_zip_detected_by_magic_whatever_the_name(tmp_path):
    p = make_input(tmp_path, "zip", header_bytes() + line() + b"\n")
    renamed = p.rename(tmp_path / "download.bin")
    src = Source(renamed)
    assert src.kind == "zip" and src.member == "multimedia.txt"


def test_gz_detected_by_magic_whatever_the_name(tmp_path):
    p = write(tmp_path / "multimedia.txt", gzip.compress(header_bytes() + line() + b"\n"))
    src = Source(p)
    assert src.kind == "gz"
    assert [c.data for c in src.chunks()] == [line() + b"\n"]


def test_zip_without_multimedia_names_its_members(tmp_path):
    p = tmp_path / "dwca.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("meta.xml", "<archive/>")
        z.writestr("occurrence.txt", "gbifID\n1\n")
        z.writestr("dataset/eml.xml", "<eml/>")
    with pytest.raises(InputError, match="no multimedia.txt") as e:
        Source(p)
    msg = str(e.value)
    assert "occurrence.txt" in msg and "meta.xml" in msg and "dataset/eml.xml" in msg


def test_empty_zip_says_so(tmp_path):
    p = tmp_path / "dwca.zip"
    with zipfile.ZipFile(p, "w"):
        pass
    with pytest.raises(InputError, match=r"no multimedia.txt .*\(empty\)"):
        Source(p)


def test_non_zip_bytes_named_zip_is_an_input_error(tmp_path):
    p = write(tmp_path / "dwca.zip", b"this is not an archive\n" * 10)
    with pytest.raises(InputError, match="not a readable zip archive"):
        Source(p)


def test_truncated_zip_is_an_input_error(tmp_path):
    p = make_input(tmp_path, "zip", NORWAY.read_bytes())
    data = p.read_bytes()
    cut = write(tmp_path / "cut.zip", data[: len(data) // 2])
    with pytest.raises(InputError, match="not a readable zip archive"):
        Source(cut)


def test_zip_with_corrupt_member_data_is_an_input_error(tmp_path):
    p = tmp_path / "dwca.zip"
    text = NORWAY.read_bytes()
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("multimedia.txt", text)
    with zipfile.ZipFile(p) as z:
        info = z.getinfo("multimedia.txt")
    data = bytearray(p.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + info.compress_size // 2, start + info.compress_size // 2 + 64):
        data[i] ^= 0x5A
    write(p, bytes(data))
    with pytest.raises(InputError, match="cannot read"):
        src = Source(p)
        list(src.chunks(chunk_bytes=4096))


def test_truncated_gz_is_an_input_error_when_read(tmp_path):
    rnd = random.Random(2)
    text = header_bytes() + b"".join(
        line(str(i), f"https://h.example/{rnd.getrandbits(128):x}.jpg") + b"\n"
        for i in range(1, 3000))
    blob = gzip.compress(text)
    p = write(tmp_path / "m.txt.gz", blob[: len(blob) // 2])
    src = Source(p)  # the header is still readable
    assert src.header.index["identifier"] == 3
    with pytest.raises(InputError, match="cannot read"):
        list(src.chunks(chunk_bytes=4096))


def test_gzip_magic_but_garbage_is_an_input_error(tmp_path):
    p = write(tmp_path / "m.txt.gz", b"\x1f\x8b" + b"garbage" * 20)
    with pytest.raises(InputError, match="cannot read"):
        Source(p)


def test_missing_path_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        Source(tmp_path / "nope" / "multimedia.txt")


def test_directory_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not a file"):
        Source(tmp_path)


@pytest.mark.parametrize("kind", ["gz", "zip"])
def test_resume_point_beyond_compressed_end_is_an_input_error(tmp_path, kind):
    text = header_bytes() + sample_body(20)
    src = Source(make_input(tmp_path, kind, text))
    with pytest.raises(InputError, match="shorter than the recorded resume point"):
        list(src.chunks(start=len(text) + 10, chunk_bytes=128))


# --------------------------------------------------------------------------- chunking

def gid_of(ln: bytes) -> bytes:
    return ln.split(b"\t", 1)[0]


def check_chunks(chunks: list[reader.Chunk], expected: bytes, start: int, end: int) -> None:
    """Chunks tile [start, end) exactly and never split a run of one gbifID."""
    assert chunks, "no chunks"
    assert b"".join(c.data for c in chunks) == expected
    assert chunks[0].start == start
    assert chunks[-1].end == end
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert a.end == b.start
        assert a.end - a.start == len(a.data)  # only the very last chunk may gain a \n
        assert gid_of(a.data.rstrip(b"\n").rsplit(b"\n", 1)[-1]) != gid_of(b.data)
    for c in chunks:
        assert c.data.endswith(b"\n") and c.end > c.start


def gids_per_chunk(chunks: list[reader.Chunk]) -> list[set[bytes]]:
    return [{gid_of(ln) for ln in c.data.splitlines()} for c in chunks]


@pytest.mark.parametrize("kind", ["txt", "gz", "zip-nested"])
@pytest.mark.parametrize("chunk_bytes", [64, 97, 300])
@pytest.mark.parametrize("trailing_newline", [True, False], ids=["nl", "no-final-nl"])
def test_chunks_follow_gbifid_runs(tmp_path, kind, chunk_bytes, trailing_newline):
    body = sample_body(80, seed=chunk_bytes)
    stored = body if trailing_newline else body[:-1]
    src = Source(make_input(tmp_path, kind, header_bytes() + stored))
    off = src.header.data_offset
    end = off + len(stored)
    chunks = list(src.chunks(chunk_bytes=chunk_bytes))
    assert len(chunks) > 10
    check_chunks(chunks, body, off, end)
    if not trailing_newline:
        assert chunks[-1].end - chunks[-1].start == len(chunks[-1].data) - 1
    # each gbifID is one run in this file, so no gbifID may appear in two chunks
    seen: set[bytes] = set()
    for ids in gids_per_chunk(chunks):
        assert not ids & seen
        seen |= ids

    # Resuming at any chunk start gives the same remaining bytes, again cut between runs.
    # (Boundaries may differ from the first pass: reads restart aligned at the resume point.)
    for c in chunks[:: max(1, len(chunks) // 8)] + [chunks[-1]]:
        again = list(src.chunks(start=c.start, chunk_bytes=chunk_bytes))
        check_chunks(again, body[c.start - off:], c.start, end)


def test_run_longer_than_chunk_bytes_stays_whole(tmp_path):
    long_run = b"".join(line("42", f"https://h.example/{i}.jpg") + b"\n" for i in range(50))
    body = line("41") + b"\n" + long_run + line("43") + b"\n"
    src = Source(write(tmp_path / "m.txt", header_bytes() + body))
    chunks = list(src.chunks(chunk_bytes=64))
    check_chunks(chunks, body, src.header.data_offset, src.header.data_offset + len(body))
    assert [c.data for c in chunks] == [line("41") + b"\n", long_run, line("43") + b"\n"]


def test_line_longer_than_chunk_bytes(tmp_path):
    huge = line("8", "https://h.example/" + "x" * 5000 + ".jpg") + b"\n"
    body = line("7") + b"\n" + huge + line("9") + b"\n"
    src = Source(write(tmp_path / "m.txt", header_bytes() + body))
    chunks = list(src.chunks(chunk_bytes=64))
    check_chunks(chunks, body, src.header.data_offset, src.header.data_offset + len(body))
    assert huge in [c.data for c in chunks]


def test_gbifid_prefix_of_next_is_a_different_run(tmp_path):
    # "12" and "123" share a prefix: the run test must compare whole first fields.
    body = b"".join(line(g) + b"\n" for g in ["1", "12", "12", "123", "123", "1234"] * 5)
    src = Source(write(tmp_path / "m.txt", header_bytes() + body))
    chunks = list(src.chunks(chunk_bytes=64))
    check_chunks(chunks, body, src.header.data_offset, src.header.data_offset + len(body))
    assert len(chunks) > 5


@settings(max_examples=100, deadline=None)
@given(runs=st.lists(st.tuples(st.integers(0, 40), st.integers(1, 6)), min_size=1, max_size=40),
       chunk_bytes=st.integers(16, 400), crlf=st.booleans(), final_nl=st.booleans())
def test_chunking_property(tmp_path_factory, runs, chunk_bytes, crlf, final_nl):
    eol = b"\r\n" if crlf else b"\n"
    body = b"".join(line(str(g), f"https://h.example/{g}/{i}") + eol
                    for g, n in runs for i in range(n))
    stored = body if final_nl else body[:-1]
    expected = stored if stored.endswith(b"\n") else stored + b"\n"
    src = Source(write(tmp_path_factory.mktemp("chunk") / "m.txt", header_bytes() + stored))
    off = src.header.data_offset
    chunks = list(src.chunks(chunk_bytes=chunk_bytes))
    check_chunks(chunks, expected, off, off + len(stored))
    mid = chunks[len(chunks) // 2]
    check_chunks(list(src.chunks(start=mid.start, chunk_bytes=chunk_bytes)),
                 expected[mid.start - off:], mid.start, off + len(stored))


# --------------------------------------------------------------------------- parse_chunk

GOOD = [line("100", "https://h.example/a.jpg", creator="Ann", license="CC0", rightsHolder="R"),
        line("100", "https://h.example/b.jpg", creator="Ann", license="CC0", rightsHolder="R"),
        line("101", "https://iiif.example/iiif/X/full/max/0/default.jpg", rightsHolder="Ø")]
CLEAN = b"\n".join(GOOD) + b"\n"


def test_parse_clean_data(header):
    fast, _ = assert_same_parse(CLEAN, header)
    assert fast.skips == {}
    assert fast.lines == 3
    assert [r["identifier"] for r in rows_of(fast)] == [
        "https://h.example/a.jpg", "https://h.example/b.jpg",
        "https://iiif.example/iiif/X/full/max/0/default.jpg"]
    assert rows_of(fast)[2]["rightsHolder"] == "Ø"
    assert rows_of(fast)[0] == {"gbifID": "100", "type": "StillImage", "format": "image/jpeg",
                                "identifier": "https://h.example/a.jpg", "license": "CC0",
                                "rightsHolder": "R", "creator": "Ann", "publisher": ""}


def test_parse_empty_chunk(header):
    fast, _ = assert_same_parse(b"", header)
    assert fast.lines == 0 and fast.table.num_rows == 0


BAD_UTF8_IDENT = raw_line([b"102", b"StillImage", b"image/jpeg", b"https://h.example/\xff\xfe.jpg"]
                          + [b""] * 11)
BAD_UTF8_UNUSED = raw_line([b"103", b"StillImage", b"image/jpeg", b"https://h.example/c.jpg",
                            b"https://h.example/page-\xc3(", b"title \xe2\x82"] + [b""] * 9)
BAD_UTF8_CREATOR = raw_line([b"104", b"", b"", b"https://h.example/d.jpg"] + [b""] * 6
                            + [b"\xc0\xaf"] + [b""] * 4)

# (data, expected skips, expected number of rows)
PARSE_CASES = {
    "extra-tab": (GOOD[0] + b"\n" + GOOD[1] + b"\textra\n" + GOOD[2] + b"\n",
                  {reader.SKIP_FIELD_COUNT: 1}, 2),
    "too-few-fields": (GOOD[0] + b"\n" + b"105\tStillImage\timage/jpeg\thttps://h.example/e\n"
                       + GOOD[2] + b"\n", {reader.SKIP_FIELD_COUNT: 1}, 2),
    "one-field": (b"just some text\n" + CLEAN, {reader.SKIP_FIELD_COUNT: 1}, 3),
    "blank-lines": (b"\n" + GOOD[0] + b"\n\n\n" + GOOD[1] + b"\n", {reader.SKIP_BLANK: 3}, 2),
    "crlf": (b"\r\n".join(GOOD) + b"\r\n", {}, 3),
    "crlf-blank": (GOOD[0] + b"\r\n\r\n" + GOOD[1] + b"\r\n", {reader.SKIP_BLANK: 1}, 2),
    "mixed-eol": (GOOD[0] + b"\r\n" + GOOD[1] + b"\n" + GOOD[2] + b"\r\n", {}, 3),
    "lone-cr-in-field": (line("106", creator="a\rb", title="t\r") + b"\n" + CLEAN, {}, 4),
    "lone-cr-and-crlf": (line("106", creator="a\rb") + b"\r\n" + GOOD[0] + b"\r\n", {}, 2),
    "broken-utf8-identifier": (GOOD[0] + b"\n" + BAD_UTF8_IDENT + b"\n" + GOOD[2] + b"\n",
                               {reader.SKIP_UTF8: 1}, 2),
    "broken-utf8-used-attribution": (BAD_UTF8_CREATOR + b"\n" + CLEAN, {reader.SKIP_UTF8: 1}, 3),
    "broken-utf8-unused-column": (GOOD[0] + b"\n" + BAD_UTF8_UNUSED + b"\n", {}, 2),
    "broken-utf8-and-wrong-count": (BAD_UTF8_IDENT + b"\tx\n" + CLEAN,
                                    {reader.SKIP_FIELD_COUNT: 1}, 3),
    "quotes": (line("107", 'https://h.example/a"b".jpg', creator='He said "hi',
                    title='"quoted"', license='"CC0"') + b"\n" + CLEAN, {}, 4),
    "quote-spanning-tab": (line("108", creator='"a', license='b"') + b"\n", {}, 1),
    "all-kinds": (b"\n" + GOOD[0] + b"\r\n" + GOOD[1] + b"\tx\n" + BAD_UTF8_IDENT + b"\n"
                  + BAD_UTF8_UNUSED + b"\r\n" + b"\r\n" + b"junk\n" + GOOD[2] + b"\n",
                  {reader.SKIP_BLANK: 2, reader.SKIP_FIELD_COUNT: 2, reader.SKIP_UTF8: 1}, 3),
}


@pytest.mark.filterwarnings(_UNRAISABLE)
@pytest.mark.parametrize("name", list(PARSE_CASES))
def test_parse_fast_and_slow_agree(header, name):
    data, skips, n_rows = PARSE_CASES[name]
    fast, slow = assert_same_parse(data, header)
    assert fast.skips == skips
    assert fast.table.num_rows == n_rows
    assert fast.lines == data.count(b"\n")
    for reason in skips:
        if reason != reader.SKIP_BLANK:
            assert slow.samples[reason], reason
    for r in rows_of(fast):
        assert not r["rightsHolder"].endswith("\r")  # the CR of CRLF is never data


def test_parse_keeps_quotes_and_lone_cr_verbatim(header):
    fast, _ = assert_same_parse(PARSE_CASES["quotes"][0], header)
    r = rows_of(fast)[0]
    assert r["identifier"] == 'https://h.example/a"b".jpg'
    assert r["creator"] == 'He said "hi'
    assert r["license"] == '"CC0"'
    fast, _ = assert_same_parse(PARSE_CASES["quote-spanning-tab"][0], header)
    assert (rows_of(fast)[0]["creator"], rows_of(fast)[0]["license"]) == ('"a', 'b"')
    fast, _ = assert_same_parse(PARSE_CASES["lone-cr-in-field"][0], header)
    assert rows_of(fast)[0]["creator"] == "a\rb"


def test_parse_broken_utf8_in_unused_column_is_kept(header):
    fast, _ = assert_same_parse(PARSE_CASES["broken-utf8-unused-column"][0], header)
    assert [r["gbifID"] for r in rows_of(fast)] == ["100", "103"]
    assert rows_of(fast)[1]["identifier"] == "https://h.example/c.jpg"


def test_parse_wrong_field_count_sample_is_the_line(header):
    data = GOOD[0] + b"\textra\n"
    for fast in (True, False):
        p = parse_chunk(data, header, fast=fast)
        assert p.skips == {reader.SKIP_FIELD_COUNT: 1}
        assert p.samples[reader.SKIP_FIELD_COUNT][0].startswith("100\tStillImage")


def test_parse_cr_cr_lf_line_agrees(header):
    assert_same_parse(line("1", rightsHolder="x") + b"\r\r\n", header)
    assert_same_parse(b"\r\r\n" + CLEAN, header)


def test_parse_bom_at_chunk_start_agrees(header):
    assert_same_parse(BOM + line("1") + b"\n", header)


def test_fast_path_is_silent_on_wrong_field_count_line_with_broken_utf8(header, monkeypatch):
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    fast, _ = assert_same_parse(BAD_UTF8_IDENT + b"\tx\n" + CLEAN, header)
    assert fast.skips == {reader.SKIP_FIELD_COUNT: 1}
    assert reported == []


# --------------------------------------------------------------------------- property test

_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r"),
                max_size=12)
_NOISE = st.lists(st.one_of(
    st.sampled_from([b"\t", b"\r", b'"', b"'", b"\xff", b"\xc3", b"\xc3\xa9", b"\xe2\x82",
                     b"\xf0\x9f\x98\x80", b"\xef\xbb\xbf", b"\x00", b" ", b"1", b"a", b"\\"]),
    st.binary(max_size=4)), max_size=20).map(b"".join)


@st.composite
def _chunk_line(draw) -> bytes:
    kind = draw(st.sampled_from(["good", "good", "mutated", "noise", "empty", "cr"]))
    if kind in ("good", "mutated"):
        parts = [str(draw(st.integers(0, 10**12))).encode()]
        parts += [draw(_TEXT).encode("utf-8") for _ in range(len(HEADER) - 1)]
        if kind == "mutated":  # one field replaced by arbitrary bytes (may add tabs or CRs)
            parts[draw(st.integers(0, len(parts) - 1))] = draw(_NOISE)
        content = b"\t".join(parts)
    elif kind == "noise":
        content = draw(_NOISE)
    elif kind == "cr":
        content = b"\r"
    else:
        content = b""
    full = content.replace(b"\n", b"") + draw(st.sampled_from([b"\n", b"\n", b"\r\n"]))
    return full


@pytest.mark.filterwarnings(_UNRAISABLE)
@settings(max_examples=200, deadline=None)
@given(lines=st.lists(_chunk_line(), max_size=30))
def test_parse_property_fast_equals_slow(header, lines):
    data = b"".join(lines)
    fast, slow = assert_same_parse(data, header)
    assert fast.lines == len(lines)
    assert set(fast.skips) <= {reader.SKIP_FIELD_COUNT, reader.SKIP_UTF8, reader.SKIP_BLANK}
    blanks = sum(1 for ln in lines if ln in (b"\n", b"\r\n"))
    assert fast.skips.get(reader.SKIP_BLANK, 0) == blanks
    # rows really are the lines with the header's field count and UTF-8 used fields
    assert fast.table.num_rows == len(reference_rows_strict(lines))
    assert rows_of(fast) == reference_rows_strict(lines)


def reference_rows_strict(lines: list[bytes]) -> list[dict[str, str]]:
    out = []
    for ln in lines:
        ln = ln[:-1]
        ln = ln[:-1] if ln.endswith(b"\r") else ln
        parts = ln.split(b"\t")
        if len(parts) != len(HEADER):
            continue
        rec = dict(zip(HEADER, parts, strict=True))
        try:
            out.append({n: rec[n].decode("utf-8") for n in reader.WANTED})
        except UnicodeDecodeError:
            continue
    return out


def test_reference_parser_sanity(header):
    # guards the property test's oracle: it must reject what the reader rejects
    lines = [GOOD[0] + b"\n", b"a\tb\n", BAD_UTF8_IDENT + b"\n", b"\n", GOOD[2] + b"\r\n"]
    expected = reference_rows_strict(lines)
    assert [r["gbifID"] for r in expected] == ["100", "101"]
    assert expected == rows_of(parse_chunk(b"".join(lines), header, fast=False))
