"""Citation data: occurrence.txt and the DOI of a DwC-A (zip or unpacked) -> derived_dataset.csv."""

from __future__ import annotations

import csv
import io
import sqlite3 as stdlib_sqlite3
import zipfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from download_db.cli.main import main
from download_db.db import connection, occurrences, schema
from download_db.export.manifest import make_filters
from download_db.export.stage import run_export
from download_db.ingest.occurrences import parse_doi
from tests.helpers import NORWAY

pytestmark = pytest.mark.timeout(120)

DOI = "10.15468/dl.4bzxua"
# datasetKeys of real GBIF datasets (Artsdatabanken's Species Observation Service, iNaturalist
# research-grade, a herbarium), shared unevenly by the records
DATASETS = ("b124e1e0-4755-430f-9eab-894f25a9b59c", "50c9509d-22c7-4a22-a47d-8c48425ef4a7",
            "e45c7d91-81c6-4455-86e3-2965a5739b1f")
# occurrence.txt has ~250 columns; these few, in GBIF's order, with the four we read among them
HEADER = ["gbifID", "accessRights", "license", "modified", "institutionCode", "occurrenceID",
          "basisOfRecord", "scientificName", "datasetKey", "publishingOrgKey"]
METADATA = f"""<?xml version="1.0" encoding="utf-8"?>
<eml:eml xmlns:eml="eml://ecoinformatics.org/eml-2.1.1" packageId="{DOI}" system="http://gbif.org">
<dataset><alternateIdentifier>https://doi.org/{DOI}</alternateIdentifier>
<title>GBIF Occurrence Download {DOI}</title></dataset></eml:eml>
"""


def _dataset(gbif_id: int) -> str:
    return DATASETS[0] if gbif_id % 5 < 3 else DATASETS[1] if gbif_id % 5 < 4 else DATASETS[2]


def _gbif_ids() -> list[int]:
    with open(NORWAY, encoding="utf-8", newline="") as f:
        return sorted({int(r["gbifID"]) for r in csv.DictReader(f, delimiter="\t",
                                                                 quoting=csv.QUOTE_NONE)})


def _occurrence_txt() -> str:
    out = io.StringIO()
    out.write("\t".join(HEADER) + "\n")
    for gid in [*_gbif_ids(), 1, 2]:  # two records without images
        inst = "NOF" if _dataset(gid) == DATASETS[0] else "iNaturalist"
        row = {"gbifID": str(gid), "license": "CC_BY_4_0", "institutionCode": inst,
               "occurrenceID": f"urn:uuid:occ-{gid}", "basisOfRecord": "HUMAN_OBSERVATION",
               "scientificName": 'Parus major "great tit" Linnaeus, 1758',
               "datasetKey": _dataset(gid)}
        out.write("\t".join(row.get(c, "") for c in HEADER) + "\n")
    out.write("not-a-number\t\t\t\t\t\t\t\t" + DATASETS[0] + "\t\n")
    out.write("123\ttoo few columns\n")
    return out.getvalue()


def _saved(db: Path) -> None:
    """Every image saved, as a download would leave it (the files are not needed here)."""
    c = connection.connect(db)
    c.execute("UPDATE images SET status = 'success', file_size = 1000, width = 10, "
              "height = 10, sha256 = printf('%064d', image_id), last_attempt_at = 1.79e9, "
              "file_path = printf('%d-%02d.jpg', gbif_id, image_no)")
    c.close()


def _expected(db: Path) -> Counter[str]:
    c = stdlib_sqlite3.connect(db)
    ids = [r[0] for r in c.execute("SELECT DISTINCT gbif_id FROM images")]
    c.close()
    return Counter(_dataset(g) for g in ids)


def _derived(path: Path) -> dict[str, int]:
    rows = list(csv.reader(path.read_text().splitlines()))
    assert rows[0] == ["datasetKey", "count"]
    return {k: int(n) for k, n in rows[1:]}


@pytest.fixture(scope="module")
def dwca(tmp_path_factory) -> Path:
    """A GBIF DwC-A zip: the real Norway multimedia.txt, an occurrence.txt, metadata.xml."""
    path = tmp_path_factory.mktemp("dwca") / "0012345-261205.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(NORWAY, "multimedia.txt")
        z.writestr("occurrence.txt", _occurrence_txt())
        z.writestr("metadata.xml", METADATA)
        z.writestr("meta.xml", "<archive/>")
    return path


def test_zip_input_gives_the_datasetkey_counts_and_the_doi(dwca, tmp_path):
    db = tmp_path / "d.db"
    assert main(["ingest", "--db", str(db), "--multimedia", str(dwca), "--no-bar"]) == 0
    _saved(db)
    out = tmp_path / "out" / "manifest.parquet"
    out.parent.mkdir()
    summary = run_export(db, out)
    want = _expected(db)
    assert _derived(tmp_path / "out" / "derived_dataset.csv") == dict(want)
    assert summary.records == sum(want.values()) and summary.doi == DOI
    text = (tmp_path / "out" / "CITATION.txt").read_text()
    assert f"https://doi.org/{DOI}" in text and "derived-dataset/register" in text
    t = pq.read_table(out).to_pylist()
    r = t[0]
    assert r["dataset_key"] == _dataset(r["gbif_id"])
    assert r["occurrence_id"] == f"urn:uuid:occ-{r['gbif_id']}"
    assert r["publisher"] in ("NOF", "iNaturalist")
    c = stdlib_sqlite3.connect(db)
    assert c.execute("SELECT count(*) FROM occurrences WHERE gbif_id IN (1, 2)").fetchone() \
        == (0,)  # records without images are not kept
    c.close()


def test_filtered_export_counts_only_what_it_exported(dwca, tmp_path):
    db = tmp_path / "d.db"
    assert main(["ingest", "--db", str(db), "--multimedia", str(dwca), "--no-bar"]) == 0
    _saved(db)
    c = stdlib_sqlite3.connect(db)
    host = c.execute("SELECT host FROM hosts ORDER BY n_images LIMIT 1").fetchone()[0]
    ids = {r[0] for r in c.execute("SELECT DISTINCT i.gbif_id FROM images i JOIN hosts h "
                                   "USING (host_id) WHERE h.host = ?", (host,))}
    c.close()
    run_export(db, tmp_path / "m.csv", filters=make_filters(host=host))
    assert _derived(tmp_path / "derived_dataset.csv") == dict(Counter(map(_dataset, ids)))


def test_unpacked_archive_with_occurrence_flag(dwca, tmp_path):
    folder = tmp_path / "dwca"
    with zipfile.ZipFile(dwca) as z:
        z.extractall(folder)
    db = tmp_path / "d.db"
    assert main(["ingest", "--db", str(db), "--multimedia", str(folder / "multimedia.txt"),
                 "--occurrence", str(folder / "occurrence.txt"), "--no-bar"]) == 0
    _saved(db)
    summary = run_export(db, tmp_path / "m.parquet")
    assert _derived(tmp_path / "derived_dataset.csv") == dict(_expected(db))
    assert summary.doi == DOI  # metadata.xml beside occurrence.txt


def test_without_occurrences_the_citation_says_how_to_get_them(tmp_path):
    db = tmp_path / "d.db"
    assert main(["ingest", "--db", str(db), "--multimedia", str(NORWAY), "--no-bar"]) == 0
    _saved(db)
    run_export(db, tmp_path / "m.parquet")
    assert (tmp_path / "derived_dataset.csv").read_text() == "datasetKey,count\n"
    text = (tmp_path / "CITATION.txt").read_text()
    assert "DOI is not in the database" in text and "have no datasetKey" in text


def test_bad_occurrence_input_is_one_line(tmp_path, capsys):
    db = tmp_path / "d.db"
    no_key = tmp_path / "occurrence.txt"
    no_key.write_text("gbifID\toccurrenceID\n1\tx\n")
    cases = [([str(tmp_path / "missing.txt")], 2, "--occurrence"),
             ([str(no_key)], 2, "has no datasetKey column")]
    for extra, code, text in cases:
        assert main(["ingest", "--db", str(db), "--multimedia", str(NORWAY), "--no-bar",
                     "--occurrence", *extra]) == code
        err = capsys.readouterr().err
        assert text in err and err.count("\n") == 1
        assert not db.exists()  # refused before anything was built
    assert main(["ingest", "--db", str(db), "--finalize-only", "--occurrence", str(no_key)]) == 64


def test_parse_doi():
    assert parse_doi(METADATA.encode()) == DOI
    assert parse_doi(b"<eml><x>doi:10.5281/zenodo.123.</x></eml>") == "10.5281/zenodo.123"
    assert parse_doi(b"<eml/>") is None and parse_doi(None) is None


def test_migration_adds_the_table_to_an_older_database(tmp_path):
    db = tmp_path / "old.db"
    assert main(["ingest", "--db", str(db), "--multimedia", str(NORWAY), "--no-bar"]) == 0
    c = connection.connect(db)
    c.execute("DROP TABLE occurrences")  # as a database from before the table
    assert not occurrences.present(c)
    steps = [v for v, s in schema.MIGRATIONS.items() if occurrences.DDL in s]
    assert len(steps) == 1  # one migration creates it, never a rebuild
    with connection.transaction(c):
        schema.apply_migration(c, steps[0])
    assert occurrences.present(c)
    c.close()


def test_occurrences_added_to_a_finished_build(dwca, tmp_path):
    """The database of a download already under way gets its citation data without a rebuild."""
    folder = tmp_path / "dwca"
    with zipfile.ZipFile(dwca) as z:
        z.extractall(folder)
    db = tmp_path / "d.db"
    assert main(["ingest", "--db", str(db), "--multimedia", str(NORWAY), "--no-bar"]) == 0
    _saved(db)
    assert main(["ingest", "--db", str(db), "--occurrence", str(folder / "occurrence.txt"),
                 "--no-bar"]) == 0
    summary = run_export(db, tmp_path / "m.parquet")
    assert _derived(tmp_path / "derived_dataset.csv") == dict(_expected(db))
    assert summary.doi == DOI and summary.images == 1107  # the saved images are untouched
    fresh = tmp_path / "fresh.db"
    assert main(["ingest", "--db", str(fresh), "--occurrence", str(folder / "occurrence.txt"),
                 "--no-bar"]) == 3  # nothing to add to
