"""status_report.py: parse flags, read the database read-only, print or write the report."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..config import DEFAULT_DB, DEFAULT_INSTALL
from ..errors import CheckFailed, UsageError
from .main import _guard

EXAMPLES = """\
examples:
  the report on the terminal (also safe while downloads run, from any machine):
    status_report.py --db /data/download_status.db
  for scripts and dashboards:
    status_report.py --db /data/download_status.db --json | jq .images.by_status
  a page with charts to open in a browser (no network needed to view it):
    status_report.py --db /data/download_status.db --html status.html
  keep a dated copy (summary_YYYYMMDDHHMM.txt) in a folder:
    status_report.py --db /data/download_status.db --output-dir reports/
  integrity check (exit 1 if anything disagrees):
    status_report.py --db /data/download_status.db --check --install-path /data/images
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="status_report.py",
        description="Where the download stands, read-only: pipeline state, progress, "
                    "throughput and ETA, failures, hosts. Or, with --check, an integrity check.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", type=Path, default=Path(DEFAULT_DB), metavar="PATH",
                   help=f"tracking database (default: ./{DEFAULT_DB})")
    p.add_argument("--json", action="store_true",
                   help="print the report as one JSON object instead of text")
    p.add_argument("--html", type=Path, metavar="FILE",
                   help="also write a self-contained HTML page with charts to FILE")
    p.add_argument("--output-dir", type=Path, metavar="DIR",
                   help="also write summary_YYYYMMDDHHMM.txt (.json with --json) into DIR")
    g = p.add_argument_group("integrity check")
    g.add_argument("--check", action="store_true",
                   help="run the integrity check instead of the report: PRAGMA quick_check, row "
                        "counts, counters against rows, files against rows; exit 1 on any "
                        "disagreement")
    g.add_argument("--full", action="store_true",
                   help="with --check: PRAGMA integrity_check (slower, also checks index "
                        "contents) instead of quick_check")
    g.add_argument("--install-path", type=Path, default=Path(DEFAULT_INSTALL), metavar="PATH",
                   help=f"with --check: the image root to compare (default: ./{DEFAULT_INSTALL})")
    g.add_argument("--no-files", action="store_true",
                   help="with --check: skip the file checks (fast on huge image roots)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def status_main(argv: Sequence[str] | None = None) -> int:
    """status_report.py"""
    parser = _parser()
    a = parser.parse_args(argv)
    return _guard(parser.prog, lambda: run(a), a.debug)


def run(a: argparse.Namespace, out=None) -> None:
    out = out or sys.stdout
    if (a.full or a.no_files) and not a.check:
        raise UsageError("--full and --no-files go with --check")
    if a.check and (a.json or a.html):
        raise UsageError("--check prints its own result; leave out --json/--html")
    from ..report import collect

    conn = collect.open_readonly(a.db)
    try:
        if a.check:
            _check(conn, a, out)
            return
        data = collect.collect(conn, db=a.db)
    finally:
        conn.close()
    if a.json:
        text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    else:
        from ..report.text import render_text

        text = render_text(data)
    out.write(text)
    out.flush()
    if a.output_dir is not None:
        a.output_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d%H%M", time.localtime(data["generated_at"]))
        name = f"summary_{stamp}.{'json' if a.json else 'txt'}"
        _write(a.output_dir / name, text)
        print(f"status_report.py: wrote {a.output_dir / name}", file=sys.stderr)
    if a.html is not None:
        from ..report.html import render_html

        _write(a.html, render_html(data))
        print(f"status_report.py: wrote {a.html}", file=sys.stderr)


def _write(path: Path, text: str) -> None:
    """Write via a temp name and rename: a reader (a web server) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _check(conn, a: argparse.Namespace, out) -> None:
    from ..report.check import check

    def say(msg: str) -> None:
        print(f"check: {msg}", file=sys.stderr, flush=True)

    res = check(conn, None if a.no_files else a.install_path, full=a.full, say=say)
    out.write(f"sqlite {'integrity_check' if a.full else 'quick_check'}: "
              f"{'; '.join(res.sqlite_check[:20])}\n")
    for k, v in res.counts.items():
        out.write(f"rows {k:<24} {v:>14,}\n")
    for w in res.warnings:
        out.write(f"WARNING: {w}\n")
    for p in res.problems:
        out.write(f"PROBLEM: {p}\n")
    out.write(f"{'OK' if res.ok else 'FAILED'} in {res.seconds:.1f}s\n")
    out.flush()
    if not res.ok:
        raise CheckFailed(f"integrity check failed: {len(res.problems)} problem(s)"
                          + ("" if res.sqlite_check == ["ok"] else ", SQLite reports corruption"))
