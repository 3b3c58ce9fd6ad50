"""`gbif-download-db derive`: flags -> another JPEG size from saved files (upkeep/derive.py)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from . import common

HELP = "make another JPEG set (another size) from the saved files, without the network"
DESCRIPTION = ("Write a JPEG of every saved image, at most --max-size on the long edge, under "
               "--out in the image root's layout (<gbifID>-NN.jpg): from originals kept with "
               "download --keep-original, or from any saved set larger than the new size "
               "(never upscaled). JPEGs decode in draft mode (DCT scaling); all cores work "
               "at once. The database is only read (but for the run's row in runs); the "
               "position is kept in --out, so the "
               "same command continues after a kill, and a later run adds what is new.")
EXAMPLES = """\
examples:
  a 512 px set beside the originals, on every core:
    {prog} --max-size 512 --out /data/images-512 --install-path /data/originals
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_db(p)
    common.add_install_path(p, "image root the files were saved under")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="root of the new set (same layout as the image root)")
    p.add_argument("--max-size", type=int, default=512, metavar="PX",
                   help="long edge of the new JPEGs (default: 512)")
    p.add_argument("--jpeg-quality", type=int, default=85, metavar="Q",
                   help="JPEG quality (default: 85)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes (default: one per core)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="derive at most N images this run")
    common.add_progress(p, 10.0)
    common.add_debug(p)


def run(a: argparse.Namespace) -> int:
    from ..upkeep.derive import DeriveConfig, run_derive

    run_derive(DeriveConfig(db=a.db, install_path=a.install_path, out=a.out,
                            max_size=a.max_size, quality=a.jpeg_quality,
                            workers=a.workers or os.cpu_count() or 1, limit=a.limit,
                            bar=common.bar(a), progress_every=a.progress_every))
    return 0
