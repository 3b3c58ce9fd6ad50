"""What every command shares: the error guard (one line + exit code) and the common flags."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from ..config import DEFAULT_DB, DEFAULT_INSTALL, ENV_SLACK_URL
from ..db.sqlite import sqlite3
from ..errors import DownloadDbError

# sysexits.h codes, so job scripts can tell a broken database from a full disk
EXIT_DATABASE = 3
EXIT_INTERNAL = 70
EXIT_IO = 74
EXIT_INTERRUPTED = 130


def guard(prog: str, fn: Callable[[], int | None], debug: bool = False) -> int:
    """Run fn and return its exit code (None counts as 0); turn every failure into one
    line on stderr and an exit code: a user never sees a traceback unless --debug."""
    try:
        code = fn()
    except DownloadDbError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; run the same command again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    except sqlite3.Error as e:
        print(f"{prog}: database error: {e}", file=sys.stderr)
        if debug:
            traceback.print_exc()
        return EXIT_DATABASE
    except OSError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        if debug:
            traceback.print_exc()
        return EXIT_IO
    except Exception as e:  # noqa: BLE001 - last line of defence: no traceback for users
        print(f"{prog}: internal error: {type(e).__name__}: {e} (rerun with --debug for details)",
              file=sys.stderr)
        if debug:
            traceback.print_exc()
        return EXIT_INTERNAL
    return 0 if code is None else code


def add_db(p: argparse.ArgumentParser | argparse._ArgumentGroup,
           default: Path = Path(DEFAULT_DB)) -> None:
    p.add_argument("--db", type=Path, default=default, metavar="PATH",
                   help=f"tracking database (default: ./{DEFAULT_DB})")


def add_install_path(p: argparse.ArgumentParser | argparse._ArgumentGroup,
                     help: str = "image root directory") -> None:
    p.add_argument("--install-path", type=Path, default=Path(DEFAULT_INSTALL), metavar="PATH",
                   help=f"{help} (default: ./{DEFAULT_INSTALL})")


def add_debug(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")


def add_no_bar(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--no-bar", action="store_true",
                   help="log lines instead of a progress bar even on a terminal")


def add_progress(p: argparse.ArgumentParser | argparse._ArgumentGroup, default: float,
                 help: str = "seconds between progress lines when not on a terminal") -> None:
    """--progress-every and --no-bar."""
    p.add_argument("--progress-every", type=float, default=default, metavar="SECONDS",
                   help=f"{help} (default: {default:g})")
    add_no_bar(p)


def slack_url() -> str:
    """SLACK_WEBHOOK_URL from .env (looked up from the working directory) or the
    environment; "" when there is none (no notifications, no warning)."""
    import os

    from dotenv import find_dotenv, load_dotenv

    load_dotenv(find_dotenv(usecwd=True))
    return os.environ.get(ENV_SLACK_URL, "").strip()


def bar(args: argparse.Namespace) -> bool | None:
    """The config's bar setting: off with --no-bar, else a bar only on a terminal (None)."""
    return False if args.no_bar else None
