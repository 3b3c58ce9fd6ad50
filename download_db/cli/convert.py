"""`gbif-download-db convert`: flags -> the raw conversion stage (upkeep/convert.py)."""

from __future__ import annotations

import argparse
import os

from . import common

HELP = "convert camera raws kept as is (raw_unprocessed) to JPEGs"
DESCRIPTION = ("Convert every saved camera raw that the download kept as is (error_type "
               "raw_unprocessed, <gbifID>-NN.dng and friends) to <gbifID>-NN.jpg with rawpy: "
               "the embedded JPEG preview when it is at least --max-size, else a demosaic of "
               "the sensor data. The row is then recorded like a download's (size, sha256, "
               "width, height, hashes); a raw that yields no usable image (undecodable, or "
               "nearly uniform: a zeroed sensor block) becomes failed_permanent raw_unusable. "
               "Kill it at any time and run it again to continue.")
EXAMPLES = """\
examples:
  convert at the download's size, on every core, removing the raws:
    {prog} --db /data/download_status.db --install-path /data/images
  keep the raws beside their JPEGs:
    {prog} --keep-raw --max-size 2048
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_db(p)
    common.add_install_path(p, "image root the files were saved under")
    p.add_argument("--max-size", type=int, default=1024, metavar="PX",
                   help="long edge of the JPEGs, as the download's --max-size (default: 1024)")
    p.add_argument("--jpeg-quality", type=int, default=85, metavar="Q",
                   help="JPEG quality (default: 85)")
    p.add_argument("--keep-raw", action="store_true",
                   help="keep each raw file beside its JPEG (default: remove it once converted)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes converting raws (default: one per core)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="convert at most N raws")
    p.add_argument("--force", action="store_true",
                   help="run although array tasks may still be writing")
    common.add_progress(p, 10.0)
    common.add_debug(p)


def run(a: argparse.Namespace) -> int:
    from ..upkeep.convert import ConvertConfig, run_convert

    run_convert(ConvertConfig(db=a.db, install_path=a.install_path, max_size=a.max_size,
                              quality=a.jpeg_quality, keep_raw=a.keep_raw,
                              workers=a.workers or min(os.cpu_count() or 1, 64),
                              limit=a.limit, force=a.force,
                              bar=common.bar(a), progress_every=a.progress_every))
    return 0
