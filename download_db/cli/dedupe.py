"""`gbif-download-db dedupe`: flags -> exact and near duplicate groups (identity/dedupe.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DEFAULT_INSTALL
from ..states import PLACEHOLDER_MAX_SHARED
from . import common

HELP = "group saved images: identical files (sha256) and near copies (pHash distance)"
DESCRIPTION = ("Set images.dup_group (saved images with the same sha256) and images.near_group "
               "(saved images whose pHash is within --near-distance bits, transitively) for "
               "every saved image, without comparing all pairs (a banded index). A picture one "
               "host shows for more than --placeholder-urls images is a placeholder: those "
               "images fail as 'placeholder', one example file is kept, the others removed, "
               "and later downloads refuse it. finalize does the same with the last distance "
               "used. Safe to kill and re-run.")
EXAMPLES = """\
examples:
  after a download (finalize also does it):
    {prog} --db /data/download_status.db
  a small collection, where crops of the same sheet should group too:
    {prog} --db /data/download_status.db --near-distance 14
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_db(p)
    p.add_argument("--near-distance", type=int, default=None, metavar="K",
                   help="pHash bits two near copies may differ in, 0-32 (default: the last "
                        "dedupe's, else 3)")
    p.add_argument("--install-path", type=Path, default=None, metavar="PATH",
                   help="image root, where the files of placeholder pictures are removed "
                        f"(default: ./{DEFAULT_INSTALL} if it exists, else none are removed)")
    p.add_argument("--placeholder-urls", type=int, default=PLACEHOLDER_MAX_SHARED, metavar="N",
                   help="more than N images of one host showing the same picture make it a "
                        f"placeholder (default: {PLACEHOLDER_MAX_SHARED})")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes sorting the keys of the near-duplicate index at once "
                        "(default: 1)")
    p.add_argument("--force", action="store_true",
                   help="run although array tasks may still be writing")
    common.add_progress(p, 10.0)
    common.add_debug(p)


def _default_root() -> Path | None:
    root = Path(DEFAULT_INSTALL)
    return root if root.is_dir() else None


def run(a: argparse.Namespace) -> int:
    from ..identity.dedupe import DedupeConfig, run_dedupe  # late: --help stays fast

    run_dedupe(DedupeConfig(db=a.db, near_distance=a.near_distance,
                            install_path=a.install_path or _default_root(),
                            max_shared=a.placeholder_urls, workers=a.workers,
                            force=a.force,
                            bar=common.bar(a), progress_every=a.progress_every))
    return 0
