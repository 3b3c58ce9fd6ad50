"""The report and check stages: read the database read-only, print, write files atomically."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TextIO

from ..config import CheckConfig, ReportConfig
from ..errors import CheckFailed
from . import collect


def run_report(cfg: ReportConfig, out: TextIO | None = None) -> dict:
    """Print the report (text or JSON) to out; also write the dated copy and the HTML page
    when asked. Returns the collected data."""
    out = out or sys.stdout
    conn = collect.open_readonly(cfg.db)
    try:
        data = collect.collect(conn, db=cfg.db)
    finally:
        conn.close()
    if cfg.json:
        text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    else:
        from .text import render_text

        text = render_text(data)
    out.write(text)
    out.flush()
    if cfg.output_dir is not None:
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d%H%M", time.localtime(data["generated_at"]))
        path = cfg.output_dir / f"summary_{stamp}.{'json' if cfg.json else 'txt'}"
        _write(path, text)
        print(f"report: wrote {path}", file=sys.stderr)
    if cfg.html is not None:
        from .html import render_html

        _write(cfg.html, render_html(data))
        print(f"report: wrote {cfg.html}", file=sys.stderr)
    return data


def _write(path: Path, text: str) -> None:
    """Write via a temp name and rename: a reader (a web server) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def run_check(cfg: CheckConfig, out: TextIO | None = None) -> None:
    """Print the integrity check's result to out; raise CheckFailed (exit 1) on any problem."""
    from .check import check

    out = out or sys.stdout

    def say(msg: str) -> None:
        print(f"check: {msg}", file=sys.stderr, flush=True)

    conn = collect.open_readonly(cfg.db)
    try:
        res = check(conn, cfg.install_path, full=cfg.full, say=say)
    finally:
        conn.close()
    out.write(f"sqlite {'integrity_check' if cfg.full else 'quick_check'}: "
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
