"""The three historical scripts, each a thin front for its subcommands with today's flags."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from types import ModuleType

from .. import __version__
from ..errors import UsageError
from . import check, common, download, ingest, report

INIT = "init_download_db.py"
DOWNLOAD = "image_install_db.py"
STATUS = "status_report.py"


def _parser(prog: str, command: ModuleType, description: str | None = None,
            extra_examples: str = "") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description=description or command.DESCRIPTION,
        epilog=command.EXAMPLES.replace("{prog}", prog) + extra_examples,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    command.add_arguments(p)
    return p


def _version(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.set_defaults(prog=p.prog)
    return p


def init_parser() -> argparse.ArgumentParser:
    return _version(_parser(INIT, ingest))


def download_parser() -> argparse.ArgumentParser:
    return _version(_parser(DOWNLOAD, download))


def status_parser() -> argparse.ArgumentParser:
    p = _parser(STATUS, report,
                description="Where the download stands, read-only: pipeline state, progress, "
                            "throughput and ETA, failures, hosts. Or, with --check, an "
                            "integrity check.",
                extra_examples=f"  integrity check (exit 1 if anything disagrees):\n"
                               f"    {STATUS} --db /data/download_status.db --check "
                               "--install-path /data/images\n")
    g = p.add_argument_group("integrity check")
    g.add_argument("--check", action="store_true",
                   help="run the integrity check instead of the report: PRAGMA quick_check, row "
                        "counts, counters against rows, files against rows; exit 1 on any "
                        "disagreement")
    check.add_check_flags(g, prefix="with --check: ")
    return _version(p)


def parsers() -> dict[str, argparse.ArgumentParser]:
    return {INIT: init_parser(), DOWNLOAD: download_parser(), STATUS: status_parser()}


def init_main(argv: Sequence[str] | None = None) -> int:
    """init_download_db.py: gbif-download-db ingest, modes included."""
    a = init_parser().parse_args(argv)
    return common.guard(INIT, lambda: ingest.run(a), a.debug)


def download_main(argv: Sequence[str] | None = None) -> int:
    """image_install_db.py: gbif-download-db download."""
    a = download_parser().parse_args(argv)
    return common.guard(DOWNLOAD, lambda: download.run(a), a.debug)


def status_main(argv: Sequence[str] | None = None) -> int:
    """status_report.py: gbif-download-db report, or check with --check."""
    a = status_parser().parse_args(argv)
    return common.guard(STATUS, lambda: _status(a), a.debug)


def _status(a: argparse.Namespace) -> int:
    if (a.full or a.no_files) and not a.check:
        raise UsageError("--full and --no-files go with --check")
    if a.check and (a.json or a.html):
        raise UsageError("--check prints its own result; leave out --json/--html")
    return check.run(a) if a.check else report.run(a)
