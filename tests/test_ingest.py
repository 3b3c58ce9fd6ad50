"""Ingest end to end: real fixtures, grouping rules, a reference model, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import sqlite3 as stdlib_sqlite3
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import pytest

from download_db.ingest.group import MAX_IDENTIFIER
from download_db.web import keys
from tests.helpers import (
    GHANA,
    NORWAY,
    PSILOCYBE,
    build_finished,
    dump,
    generate,
    q,
    row,
    write_multimedia,
)

ROOT = Path(__file__).resolve().parent.parent


def run_counts(db: Path) -> dict:
    return json.loads(q(db, "SELECT counts FROM runs WHERE stage='ingest' AND outcome='ok'")[0][0])


@pytest.mark.parametrize(
    ("path", "lines", "images", "gbif_ids", "skips"),
    [
        (GHANA, 1184, 476, 456, {"empty_identifier": 708}),
        (NORWAY, 1140, 1107, 818, {"type_sound": 33}),
        (PSILOCYBE, 1619, 1615, 802, {"format_html_page": 4}),
    ],
)
def test_real_fixtures(build, path, lines, images, gbif_ids, skips) -> None:
    code, db = build(path)
    assert code == 0
    c = run_counts(db)["ingest"]
    assert (c["lines"], c["images"], c["skips"]) == (lines, images, skips)
    assert c["lines"] == c["rows_ok"] + c["skipped"]
    assert q(db, "SELECT count(*) FROM images")[0][0] == images
    assert q(db, "SELECT count(*), sum(n_images) FROM gbif_ids")[0] == (gbif_ids, images)
    assert q(db, "SELECT DISTINCT status FROM images") == [("pending",)]
    assert q(db, "SELECT sum(n_images) FROM hosts")[0][0] == images


def test_iiif_manifest_row_is_kept_with_its_host(build) -> None:
    code, db = build(PSILOCYBE)
    assert code == 0
    rows = q(db, "SELECT gbif_id, image_key, urls, host FROM images_v WHERE urls LIKE '%manifest%'")
    assert rows == [
        (
            1840668674,
            "https://iiif-manifest.oxalis.br.fgov.be/specimen/BR5020103035216",
            "https://iiif-manifest.oxalis.br.fgov.be/specimen/BR5020103035216/manifest",
            "iiif-manifest.oxalis.br.fgov.be",
        )
    ]


def test_grouping_ranking_and_attribution(build, tmp_path) -> None:
    base = "https://iiif.example.org/iiif/E1"
    rows = [
        row(7, f"{base}/full/600,/0/default.jpg", creator="small"),
        row(7, "https://img.example.org/a.jpg", creator="a"),
        row(7, f"{base}/manifest", fmt="application/ld+json", type_="InteractiveResource"),
        row(7, f"{base}/full/max/0/default.jpg", creator="max", license_="CC0"),
        row(7, "HTTPS://IMG.example.org:443/a.jpg#top", creator="dup"),  # same image as row 2
        row(7, "https://img.example.org/b.jpg"),
        row(8, "https://img.example.org/a.jpg", creator="other id"),  # same URL, other gbifID
    ]
    code, db = build(write_multimedia(tmp_path / "m.txt", rows))
    assert code == 0
    got = q(
        db,
        "SELECT gbif_id, image_no, image_key, urls, license, creator FROM images_v "
        "ORDER BY gbif_id, image_no",
    )
    assert got == [
        (
            7,
            0,
            base,
            f"{base}/full/max/0/default.jpg\n{base}/manifest\n{base}/full/600,/0/default.jpg",
            "CC0",
            "max",
        ),
        (7, 1, "https://img.example.org/a.jpg", "https://img.example.org/a.jpg", "CC BY 4.0", "a"),
        (7, 2, "https://img.example.org/b.jpg", "https://img.example.org/b.jpg", "CC BY 4.0", ""),
        (
            8,
            0,
            "https://img.example.org/a.jpg",
            "https://img.example.org/a.jpg",
            "CC BY 4.0",
            "other id",
        ),
    ]
    assert q(db, "SELECT gbif_id, n_images FROM gbif_ids ORDER BY gbif_id") == [(7, 3), (8, 1)]


def test_candidates_largest_first_direct_before_manifest_then_file_order(build, tmp_path) -> None:
    base = "https://iiif.example.org/iiif/E00699064"
    urls = [
        f"{base}/full/600,/0/default.jpg",
        f"{base}/manifest",
        f"{base}/full/max/0/default.jpg",
        f"{base}/full/1600,/0/default.jpg",
        f"{base}/info.json",
        f"{base}/full/600,/0/default.jpg",  # the same URL again: kept once
    ]
    code, db = build(write_multimedia(tmp_path / "m.txt", [row(9, u) for u in urls]))
    assert code == 0
    assert q(db, "SELECT urls FROM images") == [("\n".join([
        f"{base}/full/max/0/default.jpg",
        f"{base}/info.json",
        f"{base}/manifest",
        f"{base}/full/1600,/0/default.jpg",
        f"{base}/full/600,/0/default.jpg",
    ]),)]


def test_skip_reasons_are_counted(build, tmp_path) -> None:
    rows = [
        row("12x", "https://a.example.org/1.jpg"),
        row("", "https://a.example.org/2.jpg"),
        row(1, ""),
        row(2, "https://a.example.org/media/None"),
        row(3, "ftp://a.example.org/3.jpg"),
        row(4, "https:/broken"),
        row(5, "https://a.example.org/5.mp4", type_="MovingImage", fmt="video/mp4"),
        row(6, "https://a.example.org/6.html", fmt="text/html"),
        row(7, "https://a.example.org/7.pdf", type_="", fmt="application/pdf"),
        row(8, "https://a.example.org/" + "x" * MAX_IDENTIFIER),
        row(9, "https://a.example.org/ok.jpg"),
    ]
    path = write_multimedia(tmp_path / "m.txt", rows)
    with open(path, "ab") as f:
        f.write(b"10\tStillImage\n")  # wrong field count
        f.write(b"11\tStillImage\timage/jpeg\thttps://a.example.org/\xff.jpg" + b"\t" * 11 + b"\n")
    code, db = build(path)
    assert code == 0
    c = run_counts(db)["ingest"]
    assert c["skips"] == {
        "bad_gbif_id": 2,
        keys.SKIP_EMPTY: 1,
        keys.SKIP_NONE: 1,
        keys.SKIP_SCHEME: 1,
        keys.SKIP_URL: 1,
        "type_moving_image": 1,
        "format_html_page": 1,
        "format_not_image": 1,
        "overlong_identifier": 1,
        "wrong_field_count": 1,
        "broken_utf8": 1,
    }
    assert (c["lines"], c["rows_ok"], c["images"]) == (13, 1, 1)


# --- a reference model: the same rules, written the obvious way --------------


def reference(path: Path) -> list[tuple]:
    data = path.read_bytes().split(b"\n")
    header = data[0].decode("utf-8-sig").split("\t")
    ix = {
        name: header.index(name)
        for name in ("gbifID", "type", "format", "identifier", "license", "rightsHolder", "creator")
    }
    per_gid: OrderedDict[int, OrderedDict[str, list]] = OrderedDict()
    order = 0
    for line in data[1:]:
        if not line:
            continue
        f = line.decode("utf-8").split("\t")
        g = f[ix["gbifID"]].strip()
        typ, fmt = f[ix["type"]].strip().lower(), f[ix["format"]].strip().lower()
        if not (g.isdigit() and len(g) <= 18) or typ in ("sound", "movingimage"):
            continue
        if fmt.startswith(
            ("text/", "application/xhtml", "audio/", "video/", "model/", "application/pdf")
        ):
            continue
        c = keys.parse_identifier(f[ix["identifier"]])
        if not isinstance(c, keys.Candidate):
            continue
        attr = tuple(f[ix[k]].strip() for k in ("license", "rightsHolder", "creator"))
        per_gid.setdefault(int(g), OrderedDict()).setdefault(c.key, []).append((c, order, attr))
        order += 1
    out = []
    for gid, images in per_gid.items():
        for image_no, (key, cands) in enumerate(images.items()):
            ranked = sorted(cands, key=lambda t: keys.rank_key(t[0], t[1]))
            urls, seen = [], set()
            for c, _, _ in ranked:
                if c.url not in seen:
                    seen.add(c.url)
                    urls.append(c.url)
            best = ranked[0]
            attr = best[2] if any(best[2]) else (None, None, None)
            out.append((gid, image_no, "pending", best[0].host, key, "\n".join(urls), *attr))
    return sorted(out)


def test_matches_reference_model_on_generated_input(build, tmp_path) -> None:
    path = generate(tmp_path / "gen.txt", 3000, seed=7)
    code, db = build(path, "--chunk-mb", "1")
    assert code == 0
    got = sorted(r[1:] for r in dump(db)["images"])
    assert got == reference(path)
    assert run_counts(db)["ingest"]["split_gbif_ids"] > 0  # the generator scatters some IDs
    hosts = dict(q(db, "SELECT host, n_images FROM hosts"))
    counted = dict(q(db, "SELECT host, count(*) FROM images_v GROUP BY host"))
    assert hosts == counted


def test_non_contiguous_gbif_id_is_merged(build, tmp_path) -> None:
    rows = [
        row(1, "https://a.example.org/1.jpg"),
        row(2, "https://a.example.org/2.jpg"),
        row(1, "https://a.example.org/3.jpg"),
        row(1, "https://a.example.org/1.jpg"),
        row(2, "https://a.example.org/2.jpg"),
    ]
    code, db = build(write_multimedia(tmp_path / "m.txt", rows))
    assert code == 0
    assert q(db, "SELECT gbif_id, image_no, urls FROM images ORDER BY gbif_id, image_no") == [
        (1, 0, "https://a.example.org/1.jpg"),
        (1, 1, "https://a.example.org/3.jpg"),
        (2, 0, "https://a.example.org/2.jpg"),
    ]
    assert q(db, "SELECT n_images FROM hosts") == [(3,)]


def test_deterministic_across_runs_and_chunk_sizes(build, tmp_path) -> None:
    path = generate(tmp_path / "gen.txt", 1500, seed=3)
    _, db1 = build(path, db=tmp_path / "a.db")
    _, db2 = build(path, "--chunk-mb", "1", "--workers", "1", db=tmp_path / "b.db")
    assert dump(db1) == dump(db2)


def test_gz_and_zip_inputs_give_the_same_database(build, tmp_path) -> None:
    import gzip
    import zipfile

    path = generate(tmp_path / "multimedia.txt", 800, seed=5)
    gz = tmp_path / "multimedia.txt.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    zp = tmp_path / "0001234-250101.zip"
    with zipfile.ZipFile(zp, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(path, "multimedia.txt")
        z.writestr("occurrence.txt", "gbifID\n")
    dumps = [dump(build(p, db=tmp_path / f"{i}.db")[1]) for i, p in enumerate((path, gz, zp))]
    assert dumps[0] == dumps[1] == dumps[2]


# --- resume after kill -9 ------------------------------------------------------


def _ingest_cmd(db: Path, mm: Path) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "init_download_db.py"),
        "--db",
        str(db),
        "--multimedia",
        str(mm),
        "--no-bar",
        "--chunk-mb",
        "1",
        "--progress-every",
        "1000",
    ]


def _offset(db: Path) -> int:
    try:
        conn = stdlib_sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            r = conn.execute("SELECT value FROM meta WHERE key='ingest_offset'").fetchone()
            return int(r[0]) if r else 0
        finally:
            conn.close()
    except stdlib_sqlite3.Error:
        return 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_minus_9_then_rerun_gives_the_clean_result(tmp_path, seed) -> None:
    mm = generate(tmp_path / "multimedia.txt", 25_000, seed=seed)
    clean = tmp_path / "clean.db"
    subprocess.run(_ingest_cmd(clean, mm), check=True, capture_output=True, cwd=ROOT)
    expected = dump(clean)

    db = tmp_path / "killed.db"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    kills = 0
    for attempt in range(6):
        proc = subprocess.Popen(
            _ingest_cmd(db, mm), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        # Wait for its first commit, then kill after a seed-dependent delay so
        # kills land at different points of the load and the index phase.
        deadline = time.monotonic() + 30
        while proc.poll() is None and not _offset(db) and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.03 + 0.06 * ((seed * 7 + attempt * 3) % 6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        _, err = proc.communicate()
        # a kill after the build was marked complete leaves only the exit: the rerun
        # then refuses as documented, and the result below must still be the clean one
        if build_finished(proc.returncode, err.decode(), db):
            break
    else:
        final = subprocess.run(_ingest_cmd(db, mm), capture_output=True, cwd=ROOT, text=True)
        assert build_finished(final.returncode, final.stderr, db), final.stderr
    assert kills >= 1
    assert dump(db) == expected
    conn = stdlib_sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


def test_a_file_left_without_tables_by_a_killed_ingest_is_built(tmp_path: Path) -> None:
    """Killed after the file and its journal mode, before the schema committed: the next
    ingest builds it instead of calling it 'not a download database'."""
    from download_db.cli.main import main

    db = tmp_path / "d.db"
    conn = stdlib_sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")  # what connect() does first
    conn.close()
    assert db.exists() and not q(db, "SELECT name FROM sqlite_master")
    mm = write_multimedia(tmp_path / "m.txt", [row(3_900_000_001, "http://a.example.org/x.jpg")])
    assert main(["ingest", "--db", str(db), "--multimedia", str(mm), "--no-bar"]) == 0
    assert q(db, "SELECT count(*) FROM images") == [(1,)]
