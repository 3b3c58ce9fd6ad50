"""`gbif-download-db report`: flags -> ReportConfig -> the read-only report (text/JSON/HTML)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import ReportConfig
from . import common

HELP = "where the download stands, read-only: text, --json or --html"
DESCRIPTION = ("Where the download stands, read-only: pipeline state, progress, throughput and "
               "ETA, failures, hosts. Safe while downloads run, from any machine.")
EXAMPLES = """\
examples:
  the report on the terminal (also safe while downloads run, from any machine):
    {prog} --db /data/download_status.db
  for scripts and dashboards:
    {prog} --db /data/download_status.db --json | jq .images.by_status
  a page with charts to open in a browser (no network needed to view it):
    {prog} --db /data/download_status.db --html status.html
  keep a dated copy (summary_YYYYMMDDHHMM.txt) in a folder:
    {prog} --db /data/download_status.db --output-dir reports/
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_db(p)
    p.add_argument("--json", action="store_true",
                   help="print the report as one JSON object instead of text")
    p.add_argument("--html", type=Path, metavar="FILE",
                   help="also write a self-contained HTML page with charts to FILE")
    p.add_argument("--output-dir", type=Path, metavar="DIR",
                   help="also write summary_YYYYMMDDHHMM.txt (.json with --json) into DIR")
    common.add_debug(p)


def config(a: argparse.Namespace) -> ReportConfig:
    return ReportConfig(db=a.db, json=a.json, html=a.html, output_dir=a.output_dir)


def run(a: argparse.Namespace) -> int:
    from ..report.stage import run_report  # imported late: --help stays fast

    run_report(config(a))
    return 0
