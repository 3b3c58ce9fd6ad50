"""`gbif-download-db check`: flags -> CheckConfig -> the integrity check (exit 1 on problems)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DEFAULT_INSTALL, CheckConfig
from . import common

HELP = "integrity check, read-only: SQLite, counters against rows, files against rows"
DESCRIPTION = ("Integrity check, read-only: PRAGMA quick_check, row counts, counters against "
               "rows, files against rows. Exit 1 on any disagreement.")
EXAMPLES = """\
examples:
  check the database and the image root:
    {prog} --db /data/download_status.db --install-path /data/images
  the database only, with SQLite's slower full check:
    {prog} --db /data/download_status.db --no-files --full
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_db(p)
    add_check_flags(p)
    common.add_debug(p)


def add_check_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup,
                    prefix: str = "") -> None:
    """The check's own flags; ``prefix`` ("with --check: ") when they ride on the report."""
    p.add_argument("--full", action="store_true",
                   help=f"{prefix}PRAGMA integrity_check (slower, also checks index contents) "
                        "instead of quick_check")
    p.add_argument("--install-path", type=Path, default=Path(DEFAULT_INSTALL), metavar="PATH",
                   help=f"{prefix}the image root to compare (default: ./{DEFAULT_INSTALL})")
    p.add_argument("--no-files", action="store_true",
                   help=f"{prefix}skip the file checks (fast on huge image roots)")


def config(a: argparse.Namespace) -> CheckConfig:
    return CheckConfig(db=a.db, install_path=None if a.no_files else a.install_path,
                       full=a.full)


def run(a: argparse.Namespace) -> int:
    from ..report.stage import run_check  # imported late: --help stays fast

    run_check(config(a))
    return 0
