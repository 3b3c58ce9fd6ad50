"""`gbif-download-db finalize`: merge finished array tasks, then roll image statuses up."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DEFAULT_INSTALL, MODE_FINALIZE, InitConfig
from . import common
from .ingest import add_force, add_max_attempts

HELP = "recompute gbifID statuses from image statuses (merging finished array tasks first)"
DESCRIPTION = ("Fold finished array tasks in, then recompute every gbifID's status from its "
               "images' statuses (what ingest --finalize-only does). Safe to kill and re-run.")
EXAMPLES = """\
examples:
  after the downloads (or an array and its merge):
    {prog} --db /data/download_status.db
  count transient failures as done after 3 attempts instead of the default:
    {prog} --db /data/download_status.db --max-attempts 3
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_db(p)
    p.add_argument("--install-path", type=Path, default=Path(DEFAULT_INSTALL), metavar="PATH",
                   help="image root, where the files of placeholder pictures are removed "
                        f"(default: ./{DEFAULT_INSTALL})")
    add_max_attempts(p)
    add_force(p)
    common.add_no_bar(p)
    common.add_debug(p)


def run(a: argparse.Namespace) -> int:
    from ..ingest.stage import run_init  # imported late: --help stays fast

    run_init(InitConfig(db=a.db, mode=MODE_FINALIZE, install_path=a.install_path,
                        max_attempts=a.max_attempts,
                        force=a.force, bar=common.bar(a),
                        slack_webhook_url=common.slack_url()))
    return 0
