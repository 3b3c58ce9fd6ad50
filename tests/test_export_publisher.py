"""The manifest's publisher: multimedia.txt's own, else the occurrence's institutionCode."""

from __future__ import annotations

import csv
import sqlite3 as stdlib_sqlite3
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from download_db.cli.main import main
from download_db.db import connection, schema
from download_db.export.stage import run_export
from download_db.web import keys
from tests.helpers import GHANA, NORWAY, PSILOCYBE

pytestmark = pytest.mark.timeout(120)


def _publishers(path: Path) -> dict[int, set[str]]:
    """gbifID -> the publisher strings of its multimedia rows, as written."""
    out: dict[int, set[str]] = defaultdict(set)
    with open(path, encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if r["gbifID"].isdigit():
                out[int(r["gbifID"])].add((r.get("publisher") or "").strip())
    return out


def _institution(gbif_id: int) -> str:
    return ("NHM-UiO", "O", "TRH")[gbif_id % 3]


def _ingest(tmp: Path, multimedia: Path, occurrences: bool = True) -> Path:
    db = tmp / "d.db"
    args = ["ingest", "--db", str(db), "--multimedia", str(multimedia), "--no-bar"]
    if occurrences:
        occ = tmp / "occurrence.txt"
        occ.write_text("gbifID\tinstitutionCode\toccurrenceID\tdatasetKey\n" + "".join(
            f"{g}\t{_institution(g)}\tocc-{g}\tds-{g % 2}\n" for g in _publishers(multimedia)),
            encoding="utf-8")
        args += ["--occurrence", str(occ)]
    assert main(args) == 0
    c = connection.connect(db)  # every image saved (the files are not needed here)
    c.execute("UPDATE images SET status = 'success', file_size = 1000, width = 10, "
              "height = 10, sha256 = printf('%064d', image_id), last_attempt_at = 1.79e9, "
              "file_path = printf('%d-%02d.jpg', gbif_id, image_no)")
    c.close()
    return db


def _exported(db: Path, out: Path) -> dict[int, set[str | None]]:
    run_export(db, out)
    got: dict[int, set[str | None]] = defaultdict(set)
    for r in pq.read_table(out, columns=["gbif_id", "publisher"]).to_pylist():
        got[r["gbif_id"]].add(r["publisher"])
    return got


@pytest.mark.parametrize("path", [PSILOCYBE, NORWAY, GHANA], ids=lambda p: p.name[:9])
def test_the_multimedia_publisher_else_the_institution_code(tmp_path, path):
    want = _publishers(path)
    got = _exported(_ingest(tmp_path, path), tmp_path / "m.parquet")
    assert got
    checked = 0
    for g, pubs in got.items():
        if len(want[g]) == 1:  # every row of the record names the same publisher (or none)
            (p,) = want[g]
            assert pubs == {p or _institution(g)}, g
            checked += 1
    assert checked > len(got) / 2
    named = {p for ps in want.values() for p in ps if p}
    assert named <= {p for ps in got.values() for p in ps}  # every real string, as written


def test_real_strings_without_occurrences(tmp_path):
    got = _exported(_ingest(tmp_path, PSILOCYBE, occurrences=False), tmp_path / "m.parquet")
    everyone = {p for ps in got.values() for p in ps}
    assert {"iNaturalist", "PlutoF", "Klaus Høiland", "Cercle des mycologues de Montréal",
            "Field Museum of Natural History - Botany Department",
            "Natural History Museum, University of Oslo, Norway", None} == everyone


def test_an_older_database_migrates_and_falls_back(tmp_path):
    db = _ingest(tmp_path, PSILOCYBE)
    c = connection.connect(db)
    c.execute("DROP VIEW images_v")  # it names the column since v16
    c.execute("ALTER TABLE attributions DROP COLUMN publisher")  # as before schema v11
    c.execute("UPDATE meta SET value = '10' WHERE key = 'schema_version'")
    assert schema.migrate(c) == schema.SCHEMA_VERSION
    assert c.execute("SELECT count(*) FROM attributions WHERE publisher IS NOT NULL"
                     ).fetchone() == (0,)
    c.close()
    got = _exported(db, tmp_path / "m.parquet")
    assert all(pubs == {_institution(g)} for g, pubs in got.items())


def test_attribution_ids_without_a_publisher_are_unchanged(tmp_path):
    """Rows with no publisher keep the id of the three fields, so an ingest resumed across
    the upgrade (or another database's rows) agree on them."""
    db = _ingest(tmp_path, NORWAY, occurrences=False)
    c = stdlib_sqlite3.connect(db)
    rows = c.execute("SELECT attribution_id, license, rights_holder, creator, publisher "
                     "FROM attributions").fetchall()
    c.close()
    assert any(r[4] for r in rows) and any(r[4] is None for r in rows)
    for aid, lic, rh, cr, pub in rows:
        text = "\x1f".join([lic, rh, cr, *([pub] if pub else [])])
        assert aid == keys.attribution_id(text)
