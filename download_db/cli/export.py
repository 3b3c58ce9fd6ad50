"""`gbif-download-db export`: flags -> the export stage (manifest and citation files)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..export import FORMATS, licences
from . import common

HELP = "write a manifest of saved images (Parquet/CSV/JSON Lines) and the files to cite them"
DESCRIPTION = ("Write a manifest of the saved images (one row per image: path, size, hashes, "
               "URL, licence as given and normalised, rights holder, creator, dataset) and, "
               "beside it, derived_dataset.csv and CITATION.txt. Reads the database only "
               "(but for the run's row in runs).")
EXAMPLES = """\
examples:
  everything saved, as Parquet, with derived_dataset.csv and CITATION.txt beside it:
    {prog} --out out/manifest.parquet
  openly licensed images only, one per distinct file, as CSV:
    {prog} --out cc.csv --license CC0,CC-BY --exclude-duplicates
  what one host gave since a date, as JSON Lines:
    {prog} --out new.jsonl --host www.artsobservasjoner.no --since 2026-11-01
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_db(p)
    p.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="manifest file to write; the citation files go in the same folder")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="parquet (default), csv or jsonl; default from --out's suffix")
    p.add_argument("--license", action="append", metavar="LIST",
                   help="only these normalised licences, comma separated "
                        f"({', '.join(licences.SHORT_FORMS)}); repeatable")
    p.add_argument("--host", action="append", metavar="HOST",
                   help="only images from this host; repeatable")
    p.add_argument("--since", metavar="DATE",
                   help="only images downloaded on or after DATE (YYYY-MM-DD or ISO date-time, "
                        "UTC unless it says otherwise)")
    p.add_argument("--exclude-duplicates", action="store_true",
                   help="one image per picture, the first downloaded: identical files (same "
                        "sha256) and, once dedupe has run, near groups")
    p.add_argument("--exclude-placeholders", action="store_true",
                   help="leave out images flagged as a publisher's placeholder picture")
    p.add_argument("--force", action="store_true",
                   help="export even though array tasks may still be writing (their "
                        "unmerged results are missing from the export)")
    common.add_debug(p)


def run(args: argparse.Namespace) -> int:
    from ..export.manifest import make_filters  # imported late: --help stays fast
    from ..export.stage import run_export

    filters = make_filters(license=args.license, host=args.host, since=args.since,
                           exclude_duplicates=args.exclude_duplicates,
                           exclude_placeholders=args.exclude_placeholders)
    run_export(args.db, args.out, fmt=args.format, filters=filters, force=args.force)
    return 0
