"""`gbif-download-db`: one command, a subcommand per stage; the COMMANDS registry lists them."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

from .. import __version__
from . import common
from .aliases import download_main, init_main, status_main
from .aliases import parsers as alias_parsers

PROG = "gbif-download-db"

# One line per subcommand, in the order --help lists them: the name of a module in
# download_db/cli exposing HELP, add_arguments(parser) and run(args) -> int (optionally
# DESCRIPTION and EXAMPLES, where "{prog}" stands for the command line's start).
COMMANDS: tuple[str, ...] = (
    "ingest",
    "download",
    "merge",
    "finalize",
    "export",
    "report",
    "check",
    "hash",
    "dedupe",
    "verify",
    "convert",
    "derive",
    "event",
)

EXAMPLES = f"""\
examples:
  build the database, then download (resumable: run the same command again):
    {PROG} ingest --multimedia 0012345-250101.zip
    {PROG} download --max-runtime 86000
  where it stands, and an integrity check:
    {PROG} report
    {PROG} check --install-path images
  after a job array (SGE qsub -t, Slurm --array):
    {PROG} merge && {PROG} finalize
each subcommand has its own --help.
"""

__all__ = ["COMMANDS", "PROG", "build_parser", "download_main", "init_main", "main", "parsers",
           "status_main"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per entry of COMMANDS."""
    top = argparse.ArgumentParser(
        prog=PROG, description="Bulk-download the images of a GBIF occurrence download, "
                               "tracked in SQLite; one subcommand per stage.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subs = top.add_subparsers(title="commands", dest="command", metavar="COMMAND",
                              required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"{__package__}.{name}")
        prog = f"{PROG} {name}"
        sub = subs.add_parser(
            name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP),
            epilog=getattr(module, "EXAMPLES", "").replace("{prog}", prog) or None,
            formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)  # may set its own description and epilog
        sub.set_defaults(run=module.run, prog=prog)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """gbif-download-db and python -m download_db."""
    args = build_parser().parse_args(argv)
    return common.guard(args.prog, lambda: args.run(args), getattr(args, "debug", False))


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every parser a user can meet, by command line: "gbif-download-db", "gbif-download-db
    ingest", ... and the alias scripts "init_download_db.py", ... (for the docs test)."""
    top = build_parser()
    out = {PROG: top}
    for action in top._subparsers._group_actions:  # type: ignore[union-attr]
        if isinstance(action, argparse._SubParsersAction):
            out.update({f"{PROG} {name}": p for name, p in action.choices.items()})
    out.update(alias_parsers())
    return out
