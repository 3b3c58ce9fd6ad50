"""`gbif-download-db ingest`: flags -> InitConfig -> the ingest stage (build, reset, legacy...)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import (
    MODE_BUILD,
    MODE_FINALIZE,
    MODE_LEGACY,
    MODE_MERGE,
    MODE_RESET,
    InitConfig,
)
from ..states import DEFAULT_MAX_ATTEMPTS
from . import common

HELP = "build the tracking database from a GBIF multimedia.txt (also --reset, --legacy-only)"
DESCRIPTION = ("Build the SQLite tracking database from a GBIF multimedia.txt: one row per "
               "distinct image, then (optionally) import legacy files and roll statuses up "
               "into gbifIDs.")
EXAMPLES = """\
examples:
  build the database from a GBIF download (txt, txt.gz or the DwC-A zip):
    {prog} --multimedia 0012345-250101.zip
  a kill (wall-clock limit, kill -9) loses nothing; resume with the same command
  rebuild from scratch:
    {prog} --multimedia multimedia.txt --reset
  import the older downloader's processed_ids.txt into an existing database:
    {prog} --legacy-only --processed-file processed_ids.txt --install-path /data/images
  recompute gbifID statuses (also safe to kill and re-run):
    {prog} --finalize-only
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_db(p)
    p.add_argument("--multimedia", type=Path, metavar="PATH",
                   help="GBIF multimedia.txt, multimedia.txt.gz, or the DwC-A .zip holding it "
                        "(required to build)")
    p.add_argument("--occurrence", type=Path, metavar="PATH",
                   help="occurrence.txt of the unpacked DwC-A: datasetKey and occurrenceID per "
                        "gbifID for the export's citation files (read from a .zip input "
                        "without this flag)")
    common.add_install_path(p)
    p.add_argument("--processed-file", type=Path, metavar="PATH",
                   help="legacy processed_ids.txt (one gbifID per line) to import")
    p.add_argument("--failed-file", type=Path, metavar="PATH",
                   help="legacy failed_ids.txt: counted; those IDs stay pending for a fresh retry")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--reset", action="store_true",
                      help="delete an existing database (and its -wal/-shm) and rebuild")
    mode.add_argument("--legacy-only", action="store_true",
                      help="only import --processed-file into an existing database, then finalize")
    mode.add_argument("--finalize-only", action="store_true",
                      help="only recompute gbif_ids statuses from image statuses (after merging "
                           "finished array tasks); same as the finalize command")
    mode.add_argument("--merge-only", action="store_true",
                      help="only fold finished array tasks' result databases into the database "
                           "and leave it ready for the next array; same as the merge command")
    p.add_argument("--no-verify", action="store_true",
                   help="legacy import: adopt files without decoding them (fast; flagged "
                        "legacy_unverified_index)")
    add_force(p)
    add_max_attempts(p)
    p.add_argument("--chunk-mb", type=int, default=8, metavar="MB",
                   help="input read size per chunk; memory use grows with it (default: 8)")
    p.add_argument("--workers", type=int, default=2, metavar="N",
                   help="parse/transform threads, and processes decoding legacy files "
                        "(default: 2)")
    common.add_progress(p, 10.0)
    common.add_debug(p)


def add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="write the database even though array tasks may still be writing their "
                        "results (their unmerged results stay for a later merge)")


def add_max_attempts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-attempts", type=int, default=DEFAULT_MAX_ATTEMPTS, metavar="N",
                   help="attempts budget used to decide whether a transient failure still counts "
                        f"as work left (default: {DEFAULT_MAX_ATTEMPTS})")


def config(a: argparse.Namespace) -> InitConfig:
    mode = (MODE_RESET if a.reset else MODE_LEGACY if a.legacy_only
            else MODE_FINALIZE if a.finalize_only else MODE_MERGE if a.merge_only
            else MODE_BUILD)
    return InitConfig(db=a.db, multimedia=a.multimedia, install_path=a.install_path,
                      processed_file=a.processed_file, failed_file=a.failed_file, mode=mode,
                      max_attempts=a.max_attempts, chunk_mb=a.chunk_mb, workers=a.workers,
                      progress_every=a.progress_every, bar=common.bar(a), force=a.force,
                      occurrence=a.occurrence, legacy_verify=not a.no_verify,
                      slack_webhook_url=common.slack_url())


def run(a: argparse.Namespace) -> int:
    from ..ingest.stage import run_init  # imported late: --help stays fast

    run_init(config(a))
    return 0
