"""Entry points: parse flags, build a config, call one function, map errors to exit codes."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from ._sqlite import sqlite3
from .config import (
    DEFAULT_DB,
    DEFAULT_INSTALL,
    MODE_BUILD,
    MODE_FINALIZE,
    MODE_LEGACY,
    MODE_RESET,
    InitConfig,
)
from .errors import DownloadDbError
from .finalize import DEFAULT_MAX_ATTEMPTS

INIT_EXAMPLES = """\
examples:
  build the database from a GBIF download (txt, txt.gz or the DwC-A zip):
    init_download_db.py --multimedia 0012345-250101.zip
  a kill (wall-clock limit, kill -9) loses nothing; resume with the same command
  rebuild from scratch:
    init_download_db.py --multimedia multimedia.txt --reset
  import the older downloader's processed_ids.txt into an existing database:
    init_download_db.py --legacy-only --processed-file processed_ids.txt --install-path /data/images
  recompute gbifID statuses (also safe to kill and re-run):
    init_download_db.py --finalize-only
"""


def _init_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="init_download_db.py",
        description="Build the SQLite tracking database from a GBIF multimedia.txt: one row per "
                    "distinct image, then (optionally) import legacy files and roll statuses up "
                    "into gbifIDs.",
        epilog=INIT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", type=Path, default=Path(DEFAULT_DB), metavar="PATH",
                   help=f"tracking database (default: ./{DEFAULT_DB})")
    p.add_argument("--multimedia", type=Path, metavar="PATH",
                   help="GBIF multimedia.txt, multimedia.txt.gz, or the DwC-A .zip holding it "
                        "(required to build)")
    p.add_argument("--install-path", type=Path, default=Path(DEFAULT_INSTALL), metavar="PATH",
                   help=f"image root directory (default: ./{DEFAULT_INSTALL})")
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
                      help="only recompute gbif_ids statuses from image statuses")
    p.add_argument("--max-attempts", type=int, default=DEFAULT_MAX_ATTEMPTS, metavar="N",
                   help="attempts budget used to decide whether a transient failure still counts "
                        f"as work left (default: {DEFAULT_MAX_ATTEMPTS})")
    p.add_argument("--chunk-mb", type=int, default=8, metavar="MB",
                   help="input read size per chunk; memory use grows with it (default: 8)")
    p.add_argument("--workers", type=int, default=2, metavar="N",
                   help="parse/transform threads (default: 2)")
    p.add_argument("--progress-every", type=float, default=10.0, metavar="SECONDS",
                   help="seconds between progress lines when not on a terminal (default: 10)")
    p.add_argument("--no-bar", action="store_true",
                   help="log lines instead of a progress bar even on a terminal")
    p.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def init_main(argv: Sequence[str] | None = None) -> int:
    """init_download_db.py"""
    parser = _init_parser()
    a = parser.parse_args(argv)
    mode = (MODE_RESET if a.reset else MODE_LEGACY if a.legacy_only
            else MODE_FINALIZE if a.finalize_only else MODE_BUILD)
    cfg = InitConfig(db=a.db, multimedia=a.multimedia, install_path=a.install_path,
                     processed_file=a.processed_file, failed_file=a.failed_file, mode=mode,
                     max_attempts=a.max_attempts, chunk_mb=a.chunk_mb, workers=a.workers,
                     progress_every=a.progress_every, bar=False if a.no_bar else None)
    from .build import run_init

    return _guard(parser.prog, lambda: run_init(cfg), a.debug)


def _guard(prog: str, fn: Callable[[], object], debug: bool) -> int:
    """Run fn; turn every failure into one line on stderr and an exit code."""
    try:
        fn()
    except DownloadDbError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    except sqlite3.Error as e:
        print(f"{prog}: database error: {e}", file=sys.stderr)
        if debug:
            traceback.print_exc()
        return 3
    except OSError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        if debug:
            traceback.print_exc()
        return 74
    except Exception as e:  # noqa: BLE001 - last line of defence: no traceback for users
        print(f"{prog}: internal error: {type(e).__name__}: {e} (rerun with --debug for details)",
              file=sys.stderr)
        if debug:
            traceback.print_exc()
        return 70
    return 0
