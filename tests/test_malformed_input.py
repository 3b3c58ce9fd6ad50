"""End to end through init_main: malformed multimedia.txt never crashes, every line is counted."""

from __future__ import annotations

import gzip
import json
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from download_db.cli.main import init_main
from download_db.ingest import group, reader
from download_db.web import keys
from tests.helpers import q

MULTIMEDIA = Path(__file__).parent / "data" / "multimedia"
FIXTURES = sorted(MULTIMEDIA.glob("*multimedia.txt"))

HEADER = ["gbifID", "type", "format", "identifier", "references", "title", "description",
          "source", "audience", "created", "creator", "contributor", "publisher", "license",
          "rightsHolder"]
COL = {name: i for i, name in enumerate(HEADER)}
BOM = b"\xef\xbb\xbf"
SKIP_REASONS = {
    reader.SKIP_FIELD_COUNT, reader.SKIP_UTF8, reader.SKIP_BLANK, group.SKIP_GBIF,
    group.SKIP_SOUND, group.SKIP_MOVING, group.SKIP_HTML, group.SKIP_NOT_IMAGE,
    group.SKIP_OVERLONG, keys.SKIP_EMPTY, keys.SKIP_NONE, keys.SKIP_SCHEME, keys.SKIP_URL}


# --------------------------------------------------------------------------- helpers

def build(directory: Path, data: bytes, name: str = "multimedia.txt") -> tuple[int, Path]:
    path = directory / name
    path.write_bytes(data)
    db = directory / "download_status.db"
    return init_main(["--db", str(db), "--multimedia", str(path), "--no-bar"]), db


def ingest_counts(db: Path) -> dict:
    """The ingest counts of the (single, finished) ingest run; checked against meta."""
    ((outcome, counts),) = q(db, "SELECT outcome, counts FROM runs WHERE stage = 'ingest'")
    assert outcome == "ok"
    ing = json.loads(counts)["ingest"]
    ((stats,),) = q(db, "SELECT value FROM meta WHERE key = 'ingest_stats'")
    stats = json.loads(stats)
    assert (stats["lines"], stats["rows_ok"], stats["skips"]) == (
        ing["lines"], ing["rows_ok"], ing["skips"])
    assert ing["skipped"] == sum(ing["skips"].values())
    assert ing["lines"] == ing["rows_ok"] + ing["skipped"]
    return ing


def row(gid: str = "1", identifier: str = "https://h.example/a.jpg", **values: str) -> list[str]:
    r = [""] * len(HEADER)
    r[COL["gbifID"]], r[COL["type"]], r[COL["format"]] = gid, "StillImage", "image/jpeg"
    r[COL["identifier"]] = identifier
    for k, v in values.items():
        r[COL[k]] = v
    return r


def text_file(rows: list[list[str]], header: list[str] = HEADER) -> bytes:
    return "".join("\t".join(r) + "\n" for r in [header, *rows]).encode("utf-8")


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- property test

OK = "ok"
UNKNOWN = "?"

# Field text: any unicode except the separators.
_FIELD = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r"),
            max_size=15),
    st.sampled_from(["\x00", "\x0b\x0c", "\u2028\u2029\x85", "\ufeff", '"', '""', "'", "\\",
                     "NULL", "None", " ", "\x1e", "a\x00b", "\U0001f600", "e\u0301"]))
_PATH = st.text(st.sampled_from(list("abcXYZ019-_.~%!$&'()*+,;=:@/\" ") + ["é", "ß", "東"]),
                min_size=1, max_size=20)
_IDENT_ID = st.text(st.sampled_from(list("abcdef0123456789")), min_size=1, max_size=10)


@st.composite
def _valid_identifier(draw) -> str:
    host = draw(st.sampled_from(["h.example", "img.example.org", "H.Example.ORG:443",
                                 "h.example:8080", "h1.example"]))
    scheme = draw(st.sampled_from(["https", "http", "HTTPS"]))
    kind = draw(st.sampled_from(["plain", "plain", "iiif", "manifest", "info", "pad"]))
    ident = draw(_IDENT_ID)
    if kind == "plain":
        return f"{scheme}://{host}/{draw(_PATH)}.jpg"
    if kind == "iiif":
        size = draw(st.sampled_from(["max", "full", "!600,600", "1024,", ",800", "pct:50"]))
        return f"{scheme}://{host}/iiif/{ident}/full/{size}/0/default.jpg"
    if kind == "manifest":
        return f"{scheme}://{host}/iiif/{ident}/" + draw(st.sampled_from(
            ["manifest", "manifest.json"]))
    if kind == "info":
        return f"{scheme}://{host}/iiif/{ident}/info.json"
    return f"  {scheme}://{host}/{ident}.jpg#frag "


_VALID_GID = st.one_of(st.integers(1, 40), st.integers(1, 10**18 - 1)).map(str)
_BAD_UTF8 = st.sampled_from([b"\xff", b"\xc3(", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf",
                             b"\xf8\x88\x80\x80\x80"])


@st.composite
def _data_line(draw) -> tuple[bytes, str, str | None]:
    """(line bytes without end of line, expected outcome, gbifID if numeric)."""
    kind = draw(st.sampled_from([
        "valid", "valid", "valid", "valid", "bad_gbif", "empty_ident", "none_ident", "ftp",
        "no_scheme", "bad_url", "random_ident", "extra_tabs", "too_few", "huge_field",
        "huge_ident", "bad_utf8_used", "bad_utf8_unused", "sound", "moving", "html",
        "not_image", "blank", "quotes"]))
    gid = draw(_VALID_GID)
    r = row(gid, draw(_valid_identifier()))
    for name in ("references", "title", "description", "creator", "license", "rightsHolder",
                 "publisher"):
        if draw(st.booleans()):
            r[COL[name]] = draw(_FIELD)
    outcome, numeric = OK, gid
    if kind == "bad_gbif":
        r[0] = draw(st.sampled_from(["abc", "12a", "", "-5", "1.0", "١٢٣", "1 2", "0x10",
                                     "1234567890123456789", "  "]))
        outcome, numeric = "bad_gbif_id", None
    elif kind == "empty_ident":
        r[COL["identifier"]] = draw(st.sampled_from(["", " ", "   "]))
        outcome = "empty_identifier"
    elif kind == "none_ident":
        r[COL["identifier"]] = draw(st.sampled_from(
            ["https://h.example/x/None", "http://h.example/None", "https://h.example/a/None?x=1"]))
        outcome = "identifier_none"
    elif kind == "ftp":
        r[COL["identifier"]] = "ftp://h.example/" + draw(_IDENT_ID) + ".jpg"
        outcome = "bad_scheme"
    elif kind == "no_scheme":
        r[COL["identifier"]] = draw(st.sampled_from(
            ["www.example.org/a.jpg", "not available", "mailto:x@y.org", "file:///etc/passwd",
             "javascript://x"]))
        outcome = "bad_scheme"
    elif kind == "bad_url":
        r[COL["identifier"]] = draw(st.sampled_from(
            ["http:///x.jpg", "https://bad host/x.jpg", "https://h.example:80a/x", "http://?x"]))
        outcome = "bad_url"
    elif kind == "random_ident":
        prefix = draw(st.sampled_from(["", "http://", "https://h.example/", "HTTP://H.example:"]))
        text = draw(_FIELD)
        r[COL["identifier"]] = prefix + text
        outcome = UNKNOWN
    elif kind == "extra_tabs":
        r[draw(st.integers(0, len(r) - 1))] += "\t" * draw(st.integers(1, 3))
        outcome = "wrong_field_count"
    elif kind == "too_few":
        r = r[: draw(st.integers(1, len(r) - 1))]
        outcome = "wrong_field_count"
    elif kind == "huge_field":
        r[COL[draw(st.sampled_from(["description", "title", "creator", "rightsHolder"]))]] = (
            "x" * 10_000)
    elif kind == "huge_ident":
        r[COL["identifier"]] = "https://h.example/" + "a" * 10_000 + ".jpg"
        outcome = "overlong_identifier"
    elif kind == "sound":
        r[COL["type"]] = draw(st.sampled_from(["Sound", "sound", " SOUND "]))
        outcome = "type_sound"
    elif kind == "moving":
        r[COL["type"]] = "MovingImage"
        outcome = "type_moving_image"
    elif kind == "html":
        r[COL["format"]] = draw(st.sampled_from(["text/html", "TEXT/HTML; charset=UTF-8",
                                                 "application/xhtml+xml"]))
        outcome = "format_html_page"
    elif kind == "not_image":
        r[COL["format"]] = draw(st.sampled_from(["audio/mpeg", "video/mp4", "application/pdf",
                                                 "text/plain", "model/gltf+json"]))
        outcome = "format_not_image"
    elif kind == "quotes":
        r[COL["title"]] = '"' + draw(_FIELD)
        r[COL["creator"]] = 'say "hi"'
        r[COL["identifier"]] = 'https://h.example/"q".jpg'
    elif kind == "blank":
        return b"", "blank_line", None
    fields = [f.encode("utf-8") for f in r]
    if kind == "bad_utf8_used":
        col = COL[draw(st.sampled_from(["gbifID", "identifier", "type", "format", "license",
                                        "rightsHolder", "creator", "publisher"]))]
        fields[col] += draw(_BAD_UTF8)
        outcome, numeric = "broken_utf8", None
    elif kind == "bad_utf8_unused":
        col = COL[draw(st.sampled_from(["references", "title", "description"]))]
        fields[col] = draw(_BAD_UTF8) + fields[col]
    return b"\t".join(fields), outcome, numeric if outcome in (OK, UNKNOWN) else None


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(lines=st.lists(st.tuples(_data_line(), st.sampled_from([b"\n", b"\n", b"\r\n"])),
                      max_size=40),
       final_newline=st.booleans(), bom=st.booleans())
def test_never_crash_and_every_line_is_counted(tmp_path_factory, lines, final_newline, bom):
    data = (BOM if bom else b"") + ("\t".join(HEADER) + "\n").encode()
    data += b"".join(content + eol for (content, _, _), eol in lines)
    if lines and not final_newline and lines[-1][0][0]:
        data = data[:-1]  # last line without its \n (it still counts)
    rc, db = build(tmp_path_factory.mktemp("prop"), data)
    if not any(c.strip(b"\r\n") for (c, _, _), _ in lines):  # only line ends after the header
        assert rc == 2 and not db.exists()
        return
    assert rc == 0
    ing = ingest_counts(db)
    assert ing["lines"] == len(lines)

    expected = Counter(outcome for (_, outcome, _), _ in lines)
    unknown = expected.pop(UNKNOWN, 0)
    ok = expected.pop(OK, 0)
    assert ok <= ing["rows_ok"] <= ok + unknown
    for reason, n in expected.items():
        assert ing["skips"].get(reason, 0) >= n, reason
    assert set(ing["skips"]) <= set(expected) | {
        keys.SKIP_EMPTY, keys.SKIP_NONE, keys.SKIP_SCHEME, keys.SKIP_URL}
    assert sum(ing["skips"].values()) <= sum(expected.values()) + unknown

    # Every valid row's gbifID is in the database; nothing else is.
    must = {int(g) for (_, o, g), _ in lines if o == OK}
    may = must | {int(g) for (_, o, g), _ in lines if o == UNKNOWN and g is not None}
    got = {g for (g,) in q(db, "SELECT gbif_id FROM gbif_ids")}
    assert must <= got <= may
    ((images, with_images),) = q(db, "SELECT count(*), count(DISTINCT gbif_id) FROM images")
    assert with_images == len(got)
    assert len(got) <= images <= ing["rows_ok"]
    assert ing["images"] == images
    # image_no is dense per gbifID even when a gbifID's rows were not contiguous
    assert not q(db, "SELECT gbif_id FROM images GROUP BY gbif_id "
                         "HAVING max(image_no) + 1 != count(*) OR min(image_no) != 0")


# --------------------------------------------------------------------------- explicit cases

@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name.split("_multimedia")[0])
def test_real_downloads_count_every_line(tmp_path, path):
    rc, db = build(tmp_path, path.read_bytes())
    assert rc == 0
    ing = ingest_counts(db)
    assert ing["lines"] == path.read_bytes().count(b"\n") - 1
    assert ing["rows_ok"] > 0
    assert set(ing["skips"]) <= SKIP_REASONS
    ((n,),) = q(db, "SELECT count(*) FROM images")
    assert 0 < n == ing["images"] <= ing["rows_ok"]


def test_bom_header(tmp_path):
    rows = [row("11", "https://h.example/a.jpg"), row("11", "https://h.example/b.jpg"),
            row("12", "https://h.example/c.jpg")]
    rc, db = build(tmp_path, BOM + text_file(rows))
    assert rc == 0
    ing = ingest_counts(db)
    assert (ing["lines"], ing["rows_ok"], ing["skips"]) == (3, 3, {})
    assert q(db, "SELECT gbif_id, n_images FROM gbif_ids ORDER BY gbif_id") == [(11, 2),
                                                                                     (12, 1)]


def test_duplicate_unused_header_names(tmp_path):
    header = HEADER + ["title", "title", "description"]
    rows = [row("21", "https://h.example/a.jpg", creator="C") + ["t1", "t2", "d"],
            row("22", "https://h.example/b.jpg") + ["", "", ""]]
    rc, db = build(tmp_path, text_file(rows, header))
    assert rc == 0
    ing = ingest_counts(db)
    assert (ing["lines"], ing["rows_ok"]) == (2, 2)
    assert q(db, "SELECT a.creator FROM images JOIN attributions a USING (attribution_id)"
                     " WHERE gbif_id = 21") == [("C",)]


@pytest.mark.parametrize("data", [text_file([]), "\t".join(HEADER).encode(),
                                  ("\t".join(HEADER) + "\r\n").encode()],
                         ids=["header-newline", "header-no-newline", "header-crlf"])
def test_header_without_rows_is_a_one_line_error(tmp_path, data, capsys):
    # an empty download or the wrong file: "0 rows ingested" with exit 0 hid it
    rc, db = build(tmp_path, data)
    assert rc == 2
    msg = one_line(capsys.readouterr().err)
    assert "has a header line but no data lines" in msg
    assert not db.exists()


def test_no_header_row_is_a_one_line_error(tmp_path, capsys):
    data = text_file([row("31"), row("32")])[len("\t".join(HEADER)) + 1:]
    rc, db = build(tmp_path, data)
    assert rc == 2
    msg = one_line(capsys.readouterr().err)
    assert "error" in msg and "gbifID" in msg and "multimedia.txt" in msg
    assert not db.exists()


def test_header_without_identifier_is_a_one_line_error(tmp_path, capsys):
    header = [n for n in HEADER if n != "identifier"]
    rc, db = build(tmp_path, text_file([row("41")[:3] + row("41")[4:]], header))
    assert rc == 2
    assert "identifier" in one_line(capsys.readouterr().err)
    assert not db.exists()


@pytest.mark.parametrize("data", [b"", b"\n\n"], ids=["empty", "blank"])
def test_empty_file_is_a_one_line_error(tmp_path, capsys, data):
    rc, _ = build(tmp_path, data)
    assert rc == 2
    assert "empty" in one_line(capsys.readouterr().err)


def test_garbage_zip_is_a_one_line_error(tmp_path, capsys):
    rc, db = build(tmp_path, b"PK\x03\x04 not really a zip", name="dwca.zip")
    assert rc == 2
    assert "zip" in one_line(capsys.readouterr().err)
    assert not db.exists()


@pytest.mark.parametrize("kind", ["gz", "zip"])
def test_compressed_inputs_count_like_the_plain_file(tmp_path, kind):
    rows = [row("51", "https://h.example/a.jpg"), row("52", ""), row("52", "ftp://x/y"),
            row("53", "https://h.example/b.jpg", type="Sound")]
    plain = text_file(rows) + b"\n" + b"bad\tline\n"
    rc, db = build(tmp_path, plain)
    assert rc == 0
    expected = ingest_counts(db)
    assert (expected["lines"], expected["rows_ok"]) == (6, 1)
    d = tmp_path / kind
    d.mkdir()
    if kind == "gz":
        rc, db = build(d, gzip.compress(plain), name="multimedia.txt.gz")
    else:
        src = d / "src.zip"
        with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("occurrence.txt", "gbifID\n")
            z.writestr("dwca/multimedia.txt", plain)
        rc, db = build(d, src.read_bytes(), name="dwca.zip")
    assert rc == 0
    got = ingest_counts(db)
    assert {k: got[k] for k in ("lines", "rows_ok", "skips", "images")} == {
        k: expected[k] for k in ("lines", "rows_ok", "skips", "images")}


def test_every_skip_reason_at_once(tmp_path):
    lines = [
        "\t".join(row("61", "https://h.example/ok.jpg")),
        "\t".join(row("x61", "https://h.example/a.jpg")),
        "\t".join(row("62", "")),
        "\t".join(row("63", "https://h.example/None")),
        "\t".join(row("64", "ftp://h.example/a.jpg")),
        "\t".join(row("65", "http:///a.jpg")),
        "\t".join(row("66", "https://h.example/" + "a" * 5000)),
        "\t".join(row("67", "https://h.example/s.mp3", type="Sound")),
        "\t".join(row("68", "https://h.example/m.mp4", type="MovingImage")),
        "\t".join(row("69", "https://h.example/p", format="text/html")),
        "\t".join(row("70", "https://h.example/p.pdf", format="application/pdf")),
        "\t".join(row("71")) + "\textra",
        "",
    ]
    data = text_file([]) + "\n".join(lines).encode() + b"\n"
    data += b"72\tStillImage\timage/jpeg\thttps://h.example/\xff.jpg" + b"\t" * 11 + b"\n"
    rc, db = build(tmp_path, data)
    assert rc == 0
    ing = ingest_counts(db)
    assert ing["lines"] == 14 and ing["rows_ok"] == 1
    assert ing["skips"] == {
        "bad_gbif_id": 1, "empty_identifier": 1, "identifier_none": 1, "bad_scheme": 1,
        "bad_url": 1, "overlong_identifier": 1, "type_sound": 1, "type_moving_image": 1,
        "format_html_page": 1, "format_not_image": 1, "wrong_field_count": 1, "blank_line": 1,
        "broken_utf8": 1}


# --------------------------------------------------------------------------- regressions

def test_unicode_digit_port_does_not_crash(tmp_path, capsys):
    rc, db = build(tmp_path, text_file([row("81", "http://h.example:²/a.jpg"), row("82")]))
    assert "internal error" not in capsys.readouterr().err
    assert rc == 0
    ing = ingest_counts(db)
    assert (ing["lines"], ing["rows_ok"]) == (2, 1)


def test_unit_separator_in_attribution_does_not_crash(tmp_path, capsys):
    rc, db = build(tmp_path, text_file([row("91", license="CC\x1fBY"), row("92")]))
    assert "internal error" not in capsys.readouterr().err
    assert rc == 0
    assert ingest_counts(db)["rows_ok"] == 2


def test_no_traceback_on_stderr_for_broken_utf8_wrong_field_count_line(tmp_path, capsys,
                                                                       monkeypatch):
    # what a user sees: the default hook prints to stderr (pytest would otherwise intercept it)
    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
    bad = b"101\tStillImage\timage/jpeg\thttps://h.example/\xff.jpg" + b"\t" * 12 + b"\n"
    rc, db = build(tmp_path, text_file([row("100")]) + bad)
    assert rc == 0
    assert ingest_counts(db)["skips"] == {"wrong_field_count": 1}
    assert "Traceback" not in capsys.readouterr().err
