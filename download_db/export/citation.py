"""What to cite: records per source dataset (derived_dataset.csv) and CITATION.txt."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import licences

DERIVED_NAME = "derived_dataset.csv"
CITATION_NAME = "CITATION.txt"
REGISTER_URL = "https://www.gbif.org/derived-dataset/register"


@dataclass
class Tally:
    """Counts over the exported rows, fed batch by batch (rows in gbifID order)."""

    images: int = 0
    records: int = 0  # distinct gbifIDs
    records_by_dataset: Counter[str] = field(default_factory=Counter)
    records_without_dataset: int = 0
    images_by_licence: Counter[str] = field(default_factory=Counter)
    _last_gbif: int | None = None

    def add(self, batch: pa.RecordBatch) -> None:
        if not batch.num_rows:
            return
        self.images += batch.num_rows
        for v in pc.value_counts(batch.column("license_short")).to_pylist():
            self.images_by_licence[v["values"]] += v["counts"]
        # A gbifID's images are adjacent, so a record starts where the gbifID changes.
        g = batch.column("gbif_id").to_numpy(zero_copy_only=False)
        starts = np.empty(len(g), dtype=bool)
        starts[0] = g[0] != self._last_gbif
        np.not_equal(g[1:], g[:-1], out=starts[1:])
        self._last_gbif = int(g[-1])
        first = batch.column("dataset_key").filter(pa.array(starts))
        self.records += len(first)
        for v in pc.value_counts(first).to_pylist():
            if v["values"] is None:
                self.records_without_dataset += v["counts"]
            else:
                self.records_by_dataset[v["values"]] += v["counts"]


def derived_dataset_csv(t: Tally) -> str:
    """``datasetKey,count``: the list GBIF's derived-dataset registration takes."""
    rows = sorted(t.records_by_dataset.items(), key=lambda kv: (-kv[1], kv[0]))
    return "datasetKey,count\n" + "".join(f"{k},{n}\n" for k, n in rows)


def citation_text(t: Tally, *, doi: str | None, manifest_name: str, filters: str,
                  now: dt.datetime | None = None) -> str:
    """CITATION.txt: the source download, licence counts, how to register a derived dataset."""
    now = now or dt.datetime.now(dt.timezone.utc)
    lines = [
        f"{manifest_name}: {t.images:,} images of {t.records:,} GBIF occurrence records, "
        f"exported {now:%Y-%m-%d %H:%M} UTC.",
        f"Filters: {filters or 'none'}.",
        "",
        "SOURCE",
    ]
    if doi:
        lines += [f"GBIF.org, GBIF Occurrence Download https://doi.org/{doi}",
                  "Cite this DOI (with the download's date, as shown on its GBIF page) when you "
                  "use the whole download."]
    else:
        lines += ["The source download's DOI is not in the database: add the download's "
                  "occurrences with `gbif-download-db ingest --occurrence occurrence.txt` (from "
                  "the unpacked DwC-A, metadata.xml beside it), or find the DOI under "
                  "https://www.gbif.org/user/download."]
    lines += ["", "LICENCES (images by normalised licence; the licence as given is the manifest's "
              "license column, with rights_holder and creator for attribution)"]
    for short in licences.SHORT_FORMS:
        if t.images_by_licence.get(short):
            lines.append(f"  {short:<12} {t.images_by_licence[short]:>12,}")
    lines += [
        "Every CC licence requires attribution (rights_holder, creator). NC: no commercial use. "
        "ND: no modified versions shared (a resized copy may count as one). SA: share what you "
        "derive under the same licence. 'other' is a rights statement that is not an open "
        "licence (e.g. all rights reserved) and 'unknown' states no terms: ask the rights "
        "holder before reuse.",
        "",
        "REGISTERING A DERIVED DATASET",
        "This export is a subset of the download, so the fair citation is a derived dataset: a "
        "DOI of its own that credits exactly the source datasets used.",
        "  1. Deposit the data you used (e.g. this manifest) somewhere with a stable URL.",
        f"  2. Register it at {REGISTER_URL} with that URL, the source download's DOI above, "
        f"and {DERIVED_NAME} ({len(t.records_by_dataset):,} datasets, datasetKey,count); "
        "rgbif::derived_dataset() does the same from R.",
        "  3. Cite the DOI GBIF gives the derived dataset.",
    ]
    if t.records_without_dataset:
        lines.append(f"{t.records_without_dataset:,} records have no datasetKey in the database "
                     "and are not in the list: `gbif-download-db ingest --occurrence "
                     "occurrence.txt` adds them.")
    return "\n".join(lines) + "\n"
