"""`gbif-download-db merge`: fold finished array tasks' results into the main database."""

from __future__ import annotations

import argparse

from ..config import MODE_MERGE, InitConfig
from . import common
from .ingest import add_force

HELP = "fold finished array tasks' result databases into the main database"
DESCRIPTION = ("Fold the result databases of finished array tasks into the main database and "
               "leave it ready for the next array (what ingest --merge-only does).")
EXAMPLES = """\
examples:
  after an array job (run it with -hold_jid / --dependency=afterany on the array):
    {prog} --db /data/download_status.db
  merge what has finished while other tasks still run:
    {prog} --db /data/download_status.db --force
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_db(p)
    add_force(p)
    common.add_debug(p)


def run(a: argparse.Namespace) -> int:
    from ..ingest.stage import run_init  # imported late: --help stays fast

    run_init(InitConfig(db=a.db, mode=MODE_MERGE, force=a.force,
                        slack_webhook_url=common.slack_url()))
    return 0
