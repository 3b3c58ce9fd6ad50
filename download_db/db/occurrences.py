"""The occurrences table: datasetKey, occurrenceID and institutionCode per gbifID, for citation."""

from __future__ import annotations

from .sqlite import sqlite3

# One row per gbifID that has images (rows of occurrence.txt for records without
# images are not kept). gbif_id is the rowid: the export joins on it in gbifID
# order, so the lookups walk the table in order.
DDL = """CREATE TABLE IF NOT EXISTS occurrences (
    gbif_id          INTEGER PRIMARY KEY,
    dataset_key      TEXT,
    occurrence_id    TEXT,
    institution_code TEXT
)"""

# Idempotent (a re-run of the ingest replaces, never duplicates); rows are
# passed as one JSON array per batch so a batch is one statement.
UPSERT = """
INSERT INTO occurrences(gbif_id, dataset_key, occurrence_id, institution_code)
SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3
  FROM json_each(:rows) AS j
 WHERE EXISTS (SELECT 1 FROM gbif_ids g WHERE g.gbif_id = j.value ->> 0)
ON CONFLICT(gbif_id) DO UPDATE SET dataset_key = excluded.dataset_key,
       occurrence_id = excluded.occurrence_id, institution_code = excluded.institution_code
"""

META_DOI = "source_doi"  # the GBIF download's DOI, from the archive's metadata


def present(conn: sqlite3.Connection) -> bool:
    """Whether this database has the table (schema v3 or later)."""
    return conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                        "AND name = 'occurrences'").fetchone()[0] == 1
