"""`gbif-download-db event`: what a job script saw, told to Slack and the runs table."""

from __future__ import annotations

import argparse
import sys

from ..config import check_webhook_url
from . import common

HELP = "record and announce what a job script saw (a stage not run, a job killed, a verdict)"
DESCRIPTION = ("For the job scripts in scripts/: tell Slack (SLACK_WEBHOOK_URL in .env) what "
               "the stage's own command cannot, because it never ran or was killed; a stage "
               "skipped because a stage before it failed is also recorded in the runs table "
               "as prerequisite_failed. Never fails for the database or Slack: a warning, "
               "exit 0.")
EXAMPLES = """\
examples:
  the pipeline's gate did not start finalize (scripts/common.sh does this):
    {prog} --db /data/download_status.db --event skipped --stage finalize \\
        --message "download.2 FAILED: exit 73"
  the report job's verdict:
    {prog} --db /data/download_status.db --event ok --message "pipeline_20260101-120000_42"
"""
EVENTS = ("submitted", "skipped", "killed", "ok", "failed")


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_db(p)
    p.add_argument("--event", required=True, choices=EVENTS,
                   help="submitted (the pipeline), skipped (a stage not run: recorded in "
                        "runs), killed (a command ended by a signal it could not catch), ok "
                        "or failed (the pipeline's verdict)")
    p.add_argument("--stage", default="pipeline", metavar="UNIT",
                   help="the stage or array task it is about: ingest, download.3, finalize, "
                        "report (default: pipeline)")
    p.add_argument("--message", default="", metavar="TEXT",
                   help="what happened, one line (URLs are removed before it is posted)")
    common.add_debug(p)


def run(a: argparse.Namespace) -> int:
    from ..notes import job_event  # imported late: --help stays fast

    url = check_webhook_url(common.slack_url())
    warning = job_event(a.db, a.event, a.stage, a.message, url)
    if warning:
        print(f"{a.prog}: warning: {warning}", file=sys.stderr)
    return 0
