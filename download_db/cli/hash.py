"""`gbif-download-db hash`: flags -> the perceptual-hash backfill (identity/backfill.py)."""

from __future__ import annotations

import argparse

from ..db.identity import CHUNK
from . import common

HELP = "compute pHash/dHash/edge hashes for saved images that lack them (resumable backfill)"
DESCRIPTION = ("Compute the perceptual hashes (imagehash pHash and dHash, stored in images.phash "
               "and images.dhash, and the edge hashes dedupe matches crops by, in "
               "images.edge_hashes) of every saved image that lacks them: kept originals, raws, "
               "adopted files, images saved before hashing existed or before edge hashes. "
               "Reads the files, writes the database in chunks; kill it at any time and run it "
               "again to continue.")
EXAMPLES = """\
examples:
  hash what the downloads saved, with 2 decoding processes:
    {prog} --db /data/download_status.db --install-path /data/images --workers 2
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.add_db(p)
    common.add_install_path(p, "image root the files were saved under")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes decoding and hashing files (default: 1)")
    p.add_argument("--chunk", type=int, default=CHUNK, metavar="N",
                   help=f"images per transaction (a kill redoes at most this many; "
                        f"default: {CHUNK})")
    p.add_argument("--force", action="store_true",
                   help="run although array tasks may still be writing")
    common.add_progress(p, 10.0)
    common.add_debug(p)


def run(a: argparse.Namespace) -> int:
    from ..identity.backfill import HashConfig, run_hash

    run_hash(HashConfig(db=a.db, install_path=a.install_path, workers=a.workers, chunk=a.chunk,
                        force=a.force,
                        bar=common.bar(a), progress_every=a.progress_every))
    return 0
